"""A run and everything that describes it: the training configuration (``config``), the run record (``record``),
checkpoints (``checkpoint``), run folders, locks, heartbeats and status (``folders``), and a run loaded back into
a model (``load``)."""

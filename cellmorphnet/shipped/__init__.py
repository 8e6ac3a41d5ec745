"""Ready runs that ship inside the package (see ``runs.packaged_runs``); each folder is a run folder."""

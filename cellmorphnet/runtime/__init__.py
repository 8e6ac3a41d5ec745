"""Where the work runs: devices and precision (``devices``), and several processes under torchrun (``distributed``)."""

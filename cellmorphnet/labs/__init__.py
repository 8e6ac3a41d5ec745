"""Lab profiles: a lab's own values measured once from its images (``build.create_profile``), calibrated on its
reviewed cells (``build.calibrate_profile``), kept in the home and checked on every read (``profile``)."""

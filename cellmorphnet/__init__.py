"""cellmorphnet: blood-cell classification from public datasets or your own image folders."""

__version__ = "0.1.0.dev0"

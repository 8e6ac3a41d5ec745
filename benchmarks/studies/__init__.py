"""One-off investigations, kept with the figures they produced (see README.md here)."""

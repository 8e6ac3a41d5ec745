"""Package data: the embedded BloodMNIST-format sample (see ATTRIBUTION.md)."""

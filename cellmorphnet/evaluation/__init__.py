"""Evaluation of trained runs: predictions on prepared splits, metrics and reports."""

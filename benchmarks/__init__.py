"""Durable measurements a maintainer reruns: ``python -m benchmarks.NAME`` from the project root (see
docs/benchmarks.md). One-off investigations live in ``benchmarks.studies``."""

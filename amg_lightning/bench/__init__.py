"""Benchmarks: our generator against SAM's reference, and the pipeline end to end (`amg-bench`)."""

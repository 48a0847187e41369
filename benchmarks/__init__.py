"""Benchmarks that need real model sizes (a GPU); each module runs with ``python -m benchmarks.<name>``."""

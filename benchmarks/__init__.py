"""Benchmarks: run with `python -m benchmarks.<name>`; they print numbers and never assert on speed."""

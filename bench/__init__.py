"""Benchmarks: ``python -m bench.<name>``; each compares against a baseline run in the same process."""

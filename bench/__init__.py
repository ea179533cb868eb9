"""Benchmarks: each module answers one question with measured figures (`python -m bench` lists them)."""

"""The parts of `python -m bench.gpu_train` (one module a concern; not benchmarks of their own)."""

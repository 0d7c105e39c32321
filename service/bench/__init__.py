"""Benchmarks of the running service (not tests): `python -m service.bench.soak`."""

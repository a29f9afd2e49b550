"""Benchmarks of ZipVL against dense attention and its peers (run as ``python -m benchmarks.X``)."""

"""Benchmarks. Each reports a ratio against a baseline measured in the same process run, so the
figure means something on a noisy 2-core machine. Run with ``just bench`` (``python -m bench``)."""

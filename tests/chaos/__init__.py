"""``python -m tests.chaos [--profile short|long]``: the fleet under faults; see ``tests/chaos/run.py``."""

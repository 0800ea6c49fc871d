"""Relay benchmark: a C load generator plus drivers that print numbers, never timed tests.

Run ``python -m tests.bench.run --help`` from the repository root. Nothing here is collected
by pytest (no ``test_`` files): throughput on a shared 2-core machine is a measurement to
report, not a pass/fail condition.
"""

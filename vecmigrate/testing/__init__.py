"""Harnesses for tests and benchmarks: the chaos driver, the load generator and the online drill."""

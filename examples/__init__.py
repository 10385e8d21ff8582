"""Bundled KernelBench-format problems, each with a cpp and a Triton solution."""

"""Correctness: the worker harness, the wire between worker and server, and output comparison."""

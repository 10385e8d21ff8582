"""Jinja2 prompt templates and per-backend one-shot examples."""

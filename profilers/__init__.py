"""Timing, per-op breakdowns, roofline/speed-of-light and rule-based profile analysis."""

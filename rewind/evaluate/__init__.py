"""Evaluation: bundled offline suites (suites/) and the lm-eval bridge for a live model (harness.py)."""

"""Quantization pipeline (lever 5): 16-bit checkpoint -> 4/8-bit artifact with a manifest,
scored against the original with the scorecard and admitted by a quality gate.

The tools run in their own venv (`quantize.env`); this package only orchestrates and
imports nothing heavy at module level.
"""

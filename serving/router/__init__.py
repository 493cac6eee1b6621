"""Lever 1, the right model: `model="auto"` picks the cheapest adequate model."""

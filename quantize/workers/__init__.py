"""Scripts run by the quantize tool venv (see common.py); not imported by frugal."""

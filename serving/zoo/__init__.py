"""The demo zoo."""

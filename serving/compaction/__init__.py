"""Context compaction (lever 8): older chat turns replaced by a note (docs/compaction.md)."""

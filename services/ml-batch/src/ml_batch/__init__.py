"""ml-batch: not implemented yet (issue #9)."""

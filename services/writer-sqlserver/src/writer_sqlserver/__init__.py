"""writer-sqlserver: not implemented yet (issue #7)."""

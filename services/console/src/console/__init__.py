"""Tributary's read side: the query API and the web console (see the service README)."""

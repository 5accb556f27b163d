"""Tributary HTTP gateway: ``POST /ingest/data`` → ``PointBundle``s on ``dp.raw.>``."""

"""Tributary HTTP gateway: ``POST /ingest/data`` → ``PointBatch`` messages on ``dp.raw.>``."""

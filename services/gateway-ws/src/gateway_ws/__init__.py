"""Tributary WebSocket gateway: /ingest/stream with acks, backpressure and resume."""

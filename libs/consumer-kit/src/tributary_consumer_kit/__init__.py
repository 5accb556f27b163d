"""Tributary consumer kit: the bus contract as AsyncAPI 3 and JSON Schema documents, their
web page, and an example FastStream consumer of classified points (``examples/``)."""

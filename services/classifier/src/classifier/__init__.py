"""Tributary classifier: ``dp.raw.>`` in, one class per point, ``dp.classified.>`` out."""

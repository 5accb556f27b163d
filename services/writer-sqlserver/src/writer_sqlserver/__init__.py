"""writer-sqlserver: classified IoT batches from ``dp.classified.>`` into the legacy SQL Server
schema (``dbo.sensor_readings``, ``dbo.sensor_readings_latest``, ``dbo.alerts``, ``dbo.ml_events``).
"""

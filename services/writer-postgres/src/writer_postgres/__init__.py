"""writer-postgres: classified batches from ``dp.classified.>`` into PostgreSQL/TimescaleDB."""

"""ml-batch: baseline forecasts, anomaly scores, threshold forecasts and explanations of every
stream with new data, into the ``predictions`` table and ``dp.prediction.>``."""

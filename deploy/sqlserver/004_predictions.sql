-- dbo.predictions: what ml-batch writes for the domains SINK_ROUTES gives to SQL Server (the
-- legacy backend reads predictions here; ai_explainer_runner filled `explanation`). The
-- production database keeps its own table; this is the layout ml-batch expects
-- (libs/sqlserver/src/tributary_sqlserver/predictions.py).
IF OBJECT_ID('dbo.predictions', 'U') IS NULL
CREATE TABLE dbo.predictions (
    id               BIGINT IDENTITY(1,1) PRIMARY KEY,
    sensor_id        INT NOT NULL,
    model_id         NVARCHAR(50) NOT NULL,
    predicted_value  FLOAT NULL,        -- the forecast at target_timestamp
    lower_bound      FLOAT NULL,
    upper_bound      FLOAT NULL,
    anomaly_score    FLOAT NULL,
    is_anomaly       BIT NOT NULL,
    target_timestamp DATETIME2 NOT NULL,  -- UTC
    as_of            DATETIME2 NOT NULL,  -- UTC: time of the latest reading used
    created_at       DATETIME2 NOT NULL,  -- UTC
    explanation      NVARCHAR(MAX) NULL,  -- JSON {source, text, …}
    CONSTRAINT ux_predictions_sensor_model_as_of UNIQUE (sensor_id, model_id, as_of)
);

"""gateway-mqtt: MQTT QoS 1 messages → ``PointBatch``es on JetStream, acked after the PubAck."""

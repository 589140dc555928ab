"""A station in a plant: the result record, the MQTT + S3 outbox, central ingest and model rollout (docs/plant.md)."""

"""Plant integration: what a station exposes to the plant's systems (OPC UA server, result record, outbox)."""

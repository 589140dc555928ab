"""The edge runtime: core types, the shared-memory ring, and (later) crop, scoring and the daemon."""

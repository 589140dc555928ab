"""Foundation imported by every package: frame type, ring buffer, config base, errors. Heavy deps forbidden."""

"""registry subsystem."""

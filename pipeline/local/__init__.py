"""local subsystem."""

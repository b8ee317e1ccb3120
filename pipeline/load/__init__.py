"""load subsystem."""

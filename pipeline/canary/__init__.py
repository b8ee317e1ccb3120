"""canary subsystem."""

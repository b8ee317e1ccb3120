"""The ``mlcicd`` command: the top layer, which only registers each subsystem's commands."""

"""Exit codes shared by every ``mlcicd`` command.

Why a module of its own: every subsystem's ``cli.py`` returns these, and the root
command only registers subsystems, so the codes cannot live in the root without
each subsystem importing back up.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a gate or check failed
EXIT_USAGE = 2  # usage or configuration error (argparse's own status too)
EXIT_INCONCLUSIVE = 3  # canary analysis could not decide
EXIT_INTERRUPTED = 130  # SIGINT, SIGTERM or SIGHUP

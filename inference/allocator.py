"""Which C allocator the server's process runs on: jemalloc where installed, else glibc's.

Why: at 64 clients the engine's KV cache is rebuilt, step after step, as rows
join and leave, and the matrix multiplies allocate and free activations of
every batch size in between. glibc's malloc keeps much of what is freed in
its heaps, so peak RSS grows well past what is live (docs/performance.md:
peak RSS above the weights at 64 clients 1.28-1.35 GiB with glibc, 1.02-1.03
GiB with jemalloc, same code, same machine, same or better tokens/s). Forcing glibc to
return memory (a fixed ``MALLOC_MMAP_THRESHOLD_``) met the memory bound but
cost a quarter or more of the throughput; jemalloc returns it without that cost.

How: the allocator must be in place before the process allocates much, so it
cannot be switched in process. :func:`reexec_env` says how to start
this same command again with ``LD_PRELOAD`` naming jemalloc, and the server's
entry point (``inference/serve_cli.py``) ``exec``s it: same PID, same file
descriptors, so a process manager, a Kubernetes probe or a benchmark measuring
the PID sees one process. The serving image installs ``libjemalloc2``; so
does ``scripts/setup.sh``. What is active is read back from the process's own
memory map (:func:`active_allocator`), logged and shown in ``/v1/models``.

Choices: ``auto`` (jemalloc where its library is found, else glibc, said in
the log), ``jemalloc`` (refuse to start without it) and ``system`` (glibc).

Left out: tcmalloc (measured: 1.15-1.17 GiB above the weights, still over the
bound) and allocator tuning knobs (jemalloc's defaults met
the bound; ``MALLOC_CONF`` still reaches it for whoever wants to tune).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from inference.settings import Allocator

# Debian/Ubuntu's libjemalloc2, per architecture; the first that exists is used.
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
)
# Set in the environment of the re-executed process, so a preload that the
# dynamic loader ignored (a broken library) cannot loop: the second start goes on.
REEXEC_MARK = "MLCICD_ALLOCATOR_REEXEC"


class AllocatorError(RuntimeError):
    """``jemalloc`` was asked for and cannot be had; the message says why."""


def jemalloc_library(paths: Sequence[str] = JEMALLOC_PATHS) -> str | None:
    return next((path for path in paths if Path(path).is_file()), None)


def allocator_in_maps(maps: str) -> str:
    """``jemalloc`` if the memory map text shows its library mapped, else ``glibc``."""
    return "jemalloc" if "libjemalloc" in maps else "glibc"


def active_allocator(maps_path: str = "/proc/self/maps") -> str:
    """The allocator this process runs on; ``unknown`` where there is no memory map to read."""
    try:
        return allocator_in_maps(Path(maps_path).read_text())
    except OSError:
        return "unknown"


def reexec_env(
    choice: Allocator, env: Mapping[str, str], active: str, library: str | None
) -> dict[str, str] | None:
    """The environment to ``exec`` this command again with to run on jemalloc, or None.

    None when glibc is chosen, jemalloc is active already, it is not installed
    (``auto``), or this process is the re-executed one. Raises
    :class:`AllocatorError` when ``jemalloc`` is required and missing or did
    not load.
    """
    if choice == Allocator.system or active == "jemalloc":
        return None
    if library is None:
        if choice == Allocator.jemalloc:
            raise AllocatorError(
                "allocator=jemalloc but no libjemalloc.so.2 at "
                + ", ".join(JEMALLOC_PATHS)
                + " (install libjemalloc2, or set allocator to auto or system)"
            )
        return None
    if env.get(REEXEC_MARK):
        if choice == Allocator.jemalloc:
            raise AllocatorError(f"allocator=jemalloc: {library} was preloaded but is not mapped")
        return None
    preload = " ".join(part for part in (library, env.get("LD_PRELOAD", "")) if part)
    return {**env, "LD_PRELOAD": preload, REEXEC_MARK: "1"}


def run_on_chosen_allocator(choice: Allocator) -> None:
    """``exec`` this very command line again on jemalloc if :func:`reexec_env` says so.

    Returns only when the process goes on as it is. ``sys.orig_argv`` is the
    interpreter's own command line (``python -m inference.serve_cli ...`` or
    the ``mlcicd`` script), so the new image runs exactly what this one was asked to.
    """
    env = reexec_env(choice, os.environ, active_allocator(), jemalloc_library())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)

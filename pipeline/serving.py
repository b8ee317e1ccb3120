"""Starting the inference server from the pipeline: the one way, with the definition's limits.

Why here: the serving image carries ``inference/`` alone, so the server cannot
read ``pipeline.toml``. Whoever starts a server (the local runner, the latency
gate, the benchmark, ``mlcicd hello``, the test fixtures, and the rendered
Rollout through :func:`serving_env`) passes the resolved ``[serving]`` limits in
as ``MLCICD_*`` environment. Every server is started as the image starts it,
``python -m inference.serve_cli``, and is ready when ``/ready`` answers 200.

``mlcicd serve`` is registered here too: the server's own flags plus
``--profile``, whose serving limits become the defaults under env and flags.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from inference import serve_cli
from inference.settings import env_name
from pipeline.cli_args import profile_for
from pipeline.definition import DefinitionError, Serving, load_definition
from pipeline.exit_codes import EXIT_USAGE
from pipeline.processes import ManagedProcess, free_port

READY_TIMEOUT_S = 300.0


def default_profile(model: str) -> str | None:
    """The profile whose limits a model is served with unless one is named: the one
    default-profile rule of every command (:func:`pipeline.cli_args.profile_for`)."""
    return profile_for(None, model)


def serving_env(serving: Serving) -> dict[str, str]:
    """The definition's serving limits as the server's ``MLCICD_*`` environment."""
    return {env_name(field): str(value) for field, value in serving.model_dump().items()}


def server_argv(model: str, port: int | str, args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "inference.serve_cli", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), *args]  # fmt: skip


@dataclass
class InferenceServer:
    """One running server: its process (log, signals) and its base URL."""

    process: ManagedProcess
    url: str
    port: int

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal the server (SIGTERM: drain, then exit) and return its exit code."""
        return self.process.stop(sig, timeout_s=timeout_s)


def pod_threads(servers: int) -> int:
    """Torch threads for each of ``servers`` busy servers sharing this machine's cores.

    One share is left for the rest (load generator, nginx, Prometheus) and whatever
    else runs here, as a pod's CPU request would give each server its own. Measured
    on 2 cores with one core busy elsewhere: a first release served alone on 2
    threads reached a p99 of 9.75 s, and a paired latency judgement (champion and
    candidate on 2 threads each) took ~100 s instead of ~8 s quiet, threads spinning
    at barriers while their partner was descheduled (docs/gates.md).
    """
    return max(1, (os.cpu_count() or 1) // (servers + 1))


def start_server(
    name: str,
    model: str,
    log_dir: Path,
    serving: Serving,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    threads: int | None = None,
) -> InferenceServer:
    """Start a server on a free loopback port and wait for ``/ready``.

    ``env`` wins over the definition's limits; ``threads`` caps the server's torch
    threads (``OMP_NUM_THREADS``, see :func:`pod_threads`). The caller stops the
    server; a server that never became ready is stopped here before the error is raised.
    """
    port = free_port()
    merged = {**serving_env(serving), **(env or {})}
    if threads is not None:
        merged.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    argv = server_argv(model, port, args)
    return start_http_server(name, argv, port, log_dir, env=merged, cwd=cwd,
                             ready_timeout_s=ready_timeout_s)  # fmt: skip


def start_http_server(
    name: str,
    argv: Sequence[str],
    port: int,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> InferenceServer:
    """Any server that listens on ``port`` and answers ``/ready`` (ours, the baseline)."""
    process = ManagedProcess(name, argv, log_dir, env=env, cwd=cwd)
    server = InferenceServer(process, f"http://127.0.0.1:{port}", port)
    try:
        process.wait_http(f"{server.url}/ready", timeout_s=ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_server(
    name: str, model: str, log_dir: Path, serving: Serving, **options: Any
) -> Iterator[InferenceServer]:
    """:func:`start_server` for the length of a ``with`` block; always stopped."""
    server = start_server(name, model, log_dir, serving, **options)
    try:
        yield server
    finally:
        server.stop()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the text-generation HTTP server",
        description=serve_cli.DESCRIPTION
        + " Serving limits default to the pipeline definition's profile.",
    )
    serve_cli.add_flags(parser)
    parser.add_argument(
        "--profile", help="pipeline profile whose [serving] limits apply (default: by model)"
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    model = args.model or "builtin"
    environment = args.environment if args.environment in ("staging", "prod") else None
    try:
        definition = load_definition(args.profile or default_profile(model), environment)
    except DefinitionError as exc:
        print(f"mlcicd serve: invalid setting `profile` (--profile): {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve_cli.serve(
        args, defaults=definition.serving.model_dump(), own_process=args.own_process
    )


def served_model(endpoint: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The model card ``/v1/models`` reports: what the server loaded, and how it computes."""
    response = httpx.get(f"{endpoint.rstrip('/')}/v1/models", timeout=timeout_s)
    response.raise_for_status()
    card: dict[str, Any] = response.json()["data"][0]
    return card

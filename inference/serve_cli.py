"""The server's command line: load a model, put the HTTP server in front of it, drain on SIGTERM.

Two entry points share it: ``python -m inference.serve_cli`` (the serving
image's command, which carries ``inference/`` alone) and ``mlcicd serve``
(``pipeline.serving``), which adds ``--profile`` and passes the pipeline
definition's serving limits in as defaults.

Start-up order: settings (flags over ``MLCICD_*`` env over the caller's
defaults; a bad one exits 2 naming it) -> the allocator: the process ``exec``s
itself again, same PID, to run on jemalloc where installed
(inference/allocator.py), before torch is imported, so the imports and the load
happen once -> load the model (a failure exits 2 with the
loader's message, no traceback) -> bind the socket -> warm the engine in the
background, so ``/health`` answers at once and ``/ready`` is 503 until the model
is warm. One line is logged when ready: ``ready: model=NAME url=http://HOST:PORT``.

The early ``exec`` is for a process started to serve (``main()`` reading the
process's own command line, ``own_process``). A caller that runs the command in
its own process with an argument list (a test, a notebook) gets the switch after
the load instead, so that a bad model returns exit 2 to it rather than replacing
it.

Shutdown (SIGTERM or Ctrl-C): uvicorn's own handling would close the listening
socket at once, so ``/ready`` could never say 503 and a load balancer would
see refused connections. Instead the first signal starts a drain: ``/ready``
and new generation requests answer 503 while requests in flight finish (up to
the drain timeout, which settings keep >= the request deadline, so every
admitted request ends by itself); then uvicorn shuts down normally and the
process exits 0. A second signal (or a drain that times out anyway) cuts the
drain short: the engine's work for every request still running is cancelled,
so each stream ends with an error event and ``[DONE]`` (counted as 503), and
then the server shuts down.

Slow and silent clients: the HTTP protocol closes a connection whose request
head does not arrive within ``header_timeout_s`` (408 when part of it came),
the body must arrive within ``body_timeout_s`` (408), and connections beyond
``max_connections`` are closed (uvicorn's ``limit_concurrency`` answers 503
to requests over the same cap). See :mod:`inference.http_protocol`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from inference.allocator import AllocatorError, active_allocator, run_on_chosen_allocator
from inference.engine_factory import build_engine
from inference.http_protocol import timed_protocol
from inference.metrics import ServerMetrics
from inference.runtime import ServerRuntime
from inference.server import create_app
from inference.settings import (
    GRACE_AFTER_DRAIN_S,
    Allocator,
    DecodeStepPolicy,
    Device,
    DType,
    EngineChoice,
    Environment,
    LayerPolicy,
    ServerSettings,
    SettingsError,
    flag_name,
    load_settings,
    setting_label,
)

log = logging.getLogger("mlcicd.serve")

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own status for a usage error

# How the serving image starts the server: its Dockerfile's CMD. The Rollout's
# container and the local bundle image run the same (tests/infra/test_contracts.py):
# the image holds inference/ alone, so there is no `mlcicd` command in it.
IMAGE_COMMAND = ("python", "-m", "inference.serve_cli")

_FLAGS: dict[str, dict[str, Any]] = {
    "model": {"help": "HF id, local directory, `builtin` or `builtin-weak` (default builtin)"},
    "model_revision": {"help": "serve only this revision (HF commit or content hash)"},
    "device": {"choices": [d.value for d in Device]},
    "dtype": {"choices": [d.value for d in DType]},
    "engine": {
        "choices": [e.value for e in EngineChoice],
        "help": "torch, or ctranslate2 for a converted model (auto, default: as the model is)",
    },
    "layer_policy": {
        "choices": [p.value for p in LayerPolicy],
        "help": "linear layers: measure layouts and threads at start (default), or pin one",
    },
    "decode_step": {
        "choices": [d.value for d in DecodeStepPolicy],
        "help": "decode steps: plain torch for GPT-2 models (auto, default) or the model's forward",
    },
    "allocator": {
        "choices": [a.value for a in Allocator],
        "help": "C allocator: jemalloc where installed (auto, default), required, or glibc's",
    },
    "max_batch_size": {"type": int},
    "batch_window_s": {
        "type": float,
        "help": "a batch that starts idle waits until no request has come for this long",
    },
    "queue_cap": {"type": int, "help": "waiting requests before 429"},
    "max_new_tokens_cap": {"type": int},
    "context_cap": {"type": int, "help": "lower the model's context length"},
    "request_deadline_s": {"type": float},
    "drain_timeout_s": {"type": float},
    "max_body_bytes": {"type": int},
    "header_timeout_s": {"type": float, "help": "close a connection whose headers take longer"},
    "body_timeout_s": {"type": float, "help": "answer 408 when a body takes longer"},
    "max_connections": {"type": int, "help": "open connections before new requests get 503"},
    "port": {"type": int},
    "host": {"help": "bind address (default 127.0.0.1)"},
    "environment": {"choices": [e.value for e in Environment]},
    "fault_error_rate": {"type": float, "help": "tests/demos only: fraction answered 500"},
    "fault_latency_ms": {"type": float, "help": "tests/demos only: added latency"},
    "fault_token_latency_ms": {"type": float, "help": "tests/demos only: added per token"},
    "fault_seed": {"type": int, "help": "seed of the fault injector's RNG"},
}


DESCRIPTION = (
    "Run the text-generation server. Every flag can also be set as "
    "MLCICD_<NAME> (e.g. MLCICD_MAX_BATCH_SIZE); flags win."
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The server's flags, one per setting; every default is ``None`` (unset)."""
    for field, options in _FLAGS.items():
        parser.add_argument(flag_name(field), dest=field, default=None, **options)
    parser.add_argument("--access-log", dest="access_log", action="store_true", default=None)


def serve(
    args: argparse.Namespace,
    defaults: Mapping[str, Any] | None = None,
    *,
    own_process: bool = False,
) -> int:
    """Serve with flags from ``args`` over env over ``defaults``; returns the exit code.

    ``own_process``: this process was started to run this command, so it may be
    replaced (``exec``) before anything is loaded.
    """
    overrides = {field: getattr(args, field) for field in (*_FLAGS, "access_log")}
    try:
        settings = load_settings(overrides, defaults=defaults)
    except SettingsError as exc:
        print(f"mlcicd serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if own_process and not _switched_allocator(settings.allocator):
        return EXIT_USAGE
    log.info("loading model=%s device=%s", settings.model, settings.device.value)
    try:
        engine = build_engine(settings)
    except Exception as exc:  # the CLI boundary: any load failure is a clear message, exit 2
        print(f"mlcicd serve: cannot load model {settings.model!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not own_process and not _switched_allocator(settings.allocator):
        return EXIT_USAGE
    log.info(
        "loaded model=%s revision=%s engine=%s context=%d allocator=%s (asked %s)",
        engine.model_name,
        engine.revision,
        getattr(engine, "engine_name", "?"),
        engine.context_length,
        active_allocator(),
        settings.allocator.value,
    )
    return run_server(create_app(engine, settings), settings)


def _switched_allocator(choice: Allocator) -> bool:
    """Re-``exec`` on the chosen allocator if due (no return then); False if it cannot be had."""
    try:
        run_on_chosen_allocator(choice)
    except AllocatorError as exc:
        print(f"mlcicd serve: invalid setting {setting_label('allocator')}: {exc}", file=sys.stderr)
        return False
    return True


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain before its shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, runtime: ServerRuntime, settings: ServerSettings):
        super().__init__(config)
        self.runtime = runtime
        self.settings = settings
        self.exit_code = EXIT_OK
        self.bound_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._announced = False
        runtime.on_ready.append(self._announce)
        runtime.on_failure.append(self._engine_failed)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.servers and self.servers[0].sockets:
            self.bound_port = int(self.servers[0].sockets[0].getsockname()[1])
            self._announce()

    def _announce(self) -> None:
        if self._announced or not self.runtime.ready or self.bound_port is None:
            return
        self._announced = True
        url = f"http://{self.settings.host}:{self.bound_port}"
        log.info("ready: model=%s url=%s", self.settings.model, url)

    def _engine_failed(self, message: str) -> None:
        self.exit_code = EXIT_USAGE
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown
        # and the process would die by the signal instead of exiting 0.
        if self._loop is not None and not self.should_exit:
            self._loop.call_soon_threadsafe(self._start_drain)
        elif self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit())
        else:  # a second signal: skip the rest of the drain
            self._cut_drain()

    def _cut_drain(self) -> None:
        self.runtime.cut_in_flight()
        self.should_exit = True

    async def _drain_then_exit(self) -> None:
        self.runtime.begin_drain()
        timeout = self.settings.drain_timeout_s
        if await self.runtime.wait_drained(timeout):
            log.info("drained: no requests in flight; shutting down")
        else:
            log.warning(
                "drain timeout of %gs passed with %d request(s) in flight; shutting down",
                timeout,
                self.runtime.in_flight,
            )
            self.runtime.cut_in_flight()
        self.should_exit = True


def build_server(app: FastAPI, settings: ServerSettings) -> DrainingServer:
    """uvicorn configured from ``settings``: timeouts, connection cap, drain."""
    metrics: ServerMetrics = app.state.metrics
    protocol = timed_protocol(
        settings.header_timeout_s, settings.max_connections, lambda: metrics.record(408)
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        limit_concurrency=settings.max_connections,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(GRACE_AFTER_DRAIN_S),
        log_level="info",
        lifespan="on",
    )
    return DrainingServer(config, app.state.runtime, settings)


def run_server(app: FastAPI, settings: ServerSettings) -> int:
    server = build_server(app, settings)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start
        print(
            f"mlcicd serve: server failed to start on {settings.host}:{settings.port} "
            f"(exit {exc.code}); see the log above",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return server.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.serve_cli", description=DESCRIPTION)
    add_flags(parser)
    return serve(parser.parse_args(argv), own_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())

"""`mlcicd hello`: serve a model, ask it one question over HTTP, stop it.

Why: the shortest proof that the install works end to end. It starts the real
server (`mlcicd serve`) as a child process on a free loopback port, waits for
`/ready`, sends one `POST /v1/generate`, prints the answer with its timings, and
stops the server with SIGTERM (the graceful drain path), checking it exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pipeline.local_services import ManagedProcess, ServiceError, free_port


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("hello", help="serve a model and answer one request")
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--prompt", default="Q: What is the capital of France?\nA:")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.set_defaults(handler=_hello)


def _hello(args: argparse.Namespace) -> int:
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="mlcicd-hello-"))
    argv = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        "--model",
        args.model,
        "--port",
        str(port),
    ]
    started = time.monotonic()
    print(f"starting the server ({args.model}) on 127.0.0.1:{port}; log {logs}/server.log")
    server = ManagedProcess("server", argv, logs)
    try:
        server.wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=300)
        print(f"ready after {time.monotonic() - started:.1f}s")
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/generate",
            json={"prompt": args.prompt, "max_new_tokens": args.max_new_tokens},
            timeout=60,
        )
        body = response.json()
        if response.status_code != 200:
            print(f"error: HTTP {response.status_code}: {body}")
            return 1
        print(f"prompt: {args.prompt!r}")
        print(f"answer: {body['text']!r}")
        print(
            f"tokens: {body['prompt_tokens']} in, {body['generated_tokens']} out; "
            f"timings: {body.get('timings')}"
        )
        return 0
    except (ServiceError, httpx.HTTPError) as exc:
        print(f"error: {exc}")
        return 1
    finally:
        code = server.stop()
        print(f"server stopped (exit {code})")

"""`mlcicd hello`: serve a model, ask it one question over HTTP, stop it.

Why: the shortest proof that the install works end to end. It starts the real
server as the image does, with the definition's serving limits, as a child
process on a free loopback port, waits for `/ready`, sends one
`POST /v1/generate`, prints the answer with its timings, and stops the server
with SIGTERM (the graceful drain path).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pipeline.definition import load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK
from pipeline.processes import ServiceError
from pipeline.serving import default_profile, start_server


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "hello",
        help="start here: serve a model and answer one request",
        description="Start the server, send it one request, print the answer, stop it.",
    )
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--prompt", default="Q: What is the capital of France?\nA:")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.set_defaults(handler=_hello)


def _hello(args: argparse.Namespace) -> int:
    logs = Path(tempfile.mkdtemp(prefix="mlcicd-hello-"))
    limits = load_definition(default_profile(args.model)).serving
    started = time.monotonic()
    print(f"starting the server ({args.model}); log {logs}/server.log")
    try:
        server = start_server("server", args.model, logs, limits)
    except ServiceError as exc:
        print(f"error: {exc}")
        return EXIT_FAILED
    try:
        print(f"ready on {server.url} after {time.monotonic() - started:.1f}s")
        response = httpx.post(
            f"{server.url}/v1/generate",
            json={"prompt": args.prompt, "max_new_tokens": args.max_new_tokens},
            timeout=60,
        )
        body = response.json()
        if response.status_code != 200:
            print(f"error: HTTP {response.status_code}: {body}")
            return EXIT_FAILED
        print(f"prompt: {args.prompt!r}")
        print(f"answer: {body['text']!r}")
        print(
            f"tokens: {body['prompt_tokens']} in, {body['generated_tokens']} out; "
            f"timings: {body.get('timings')}"
        )
        return EXIT_OK
    except httpx.HTTPError as exc:
        print(f"error: {exc}")
        return EXIT_FAILED
    finally:
        code = server.stop()
        print(f"server stopped (exit {code})")

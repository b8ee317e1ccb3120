"""Run the Pulumi program under Pulumi's mock runtime and record every resource.

Why mocks: ``mlcicd infra render`` and the infra tests must see exactly what
``pulumi up`` would declare — types, names, inputs, parents, ``dependsOn`` — without a
cluster, GitHub, a Docker engine or the Pulumi CLI. ``pulumi.runtime.set_mocks`` swaps
the engine for an in-process monitor; :class:`RecordingMonitor` keeps each
registration request (the plain ``Mocks`` interface sees no parent or dependencies).

Config comes from ``Pulumi.yaml`` defaults overlaid with ``Pulumi.<stack>.yaml`` (what
the CLI does), and every secret key gets a placeholder value marked secret. Secret
values stay wrapped (``{"__secret__": value}``) in the recording so tests can prove no
secret ever appears outside such a wrapper.

One program run per process (Pulumi's runtime keeps global state), so callers run
``python -m infra.mock_runtime REQUEST_JSON`` in a subprocess; see :func:`record`.
Left out: preview mode (unknowns) — every value is known here.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from infra.config import PROJECT, REPO_ROOT, SECRET_KEYS, _raw, project_defaults

EXIT_CONFIG = 2


class RenderError(RuntimeError):
    """The program could not be run (bad config, bad stack file); the message says why."""


def placeholder(key: str) -> str:
    return f"mock-secret-{key}"


def stack_config(
    stack: str,
    root: Path = REPO_ROOT,
    stack_file: Path | None = None,
    secrets: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(all config as the CLI would pass it, secret key -> value)."""
    path = stack_file or root / f"Pulumi.{stack}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise RenderError(f"{path}: no such stack file (stacks: Pulumi.<name>.yaml)") from exc
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from exc
    values: dict[str, str] = {
        f"{PROJECT}:{key}": _raw(value) for key, value in project_defaults(root).items()
    }
    secret_values = {f"{PROJECT}:{key}": placeholder(key) for key in SECRET_KEYS}
    for key, value in (data.get("config") or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and "secure" in value:
            secret_values[full] = placeholder(full.split(":", 1)[1])
        else:
            values[full] = _raw(value)
    for key, value in (secrets or {}).items():
        secret_values[f"{PROJECT}:{key}"] = value
    values.update(secret_values)
    return values, {k.split(":", 1)[1]: v for k, v in secret_values.items()}


def _plain(value: Any) -> Any:
    """Deserialized inputs as JSON data; secrets wrapped, integral floats as ints."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return {"__secret__": _plain(rpc.unwrap_rpc_secret(value))}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _timeouts(request: Any) -> dict[str, str]:
    """The resource's ``customTimeouts`` (only the operations that have one)."""
    if not request.HasField("customTimeouts"):
        return {}
    timeouts = request.customTimeouts
    found = {op: getattr(timeouts, op) for op in ("create", "update", "delete")}
    return {op: value for op, value in found.items() if value}


def _monitor(mocks: Any, records: list[dict[str, Any]]) -> Any:
    """A mock monitor that also keeps every registration (parent, deps, options)."""
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor

    class RecordingMonitor(MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
            records.append(
                {
                    "urn": response.urn,
                    "type": request.type,
                    "name": request.name,
                    "custom": bool(request.custom),
                    "parent": request.parent or None,
                    "dependsOn": sorted(request.dependencies),
                    "provider": request.provider or None,
                    "importId": request.importId or None,
                    "protect": bool(request.protect),
                    "ignoreChanges": sorted(request.ignoreChanges),
                    "customTimeouts": _timeouts(request),
                    "inputs": _plain(rpc.deserialize_properties(request.object)),
                }
            )
            return response

    return RecordingMonitor(mocks)


def _mocks() -> Any:
    """Resource state = inputs, plus the few outputs the program reads back."""
    import pulumi

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            state = dict(args.inputs)
            digest = hashlib.sha256(f"{args.typ}/{args.name}".encode()).hexdigest()
            if args.typ == "github:index/repository:Repository":
                state.update(nodeId=f"R_{digest[:12]}", repoId=int(digest[:6], 16))
            if args.typ == "docker:index/image:Image":
                state["repoDigest"] = f"{args.inputs['imageName']}@sha256:{digest}"
            return f"{args.name}-id", state

        def call(
            self, args: pulumi.runtime.MockCallArgs
        ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            if args.token == "github:index/getUser:getUser":
                user = str(args.args.get("username", ""))
                number = int(hashlib.sha256(user.encode()).hexdigest()[:7], 16)
                return {"id": str(number), "login": user}, []
            return {}, []

    return Mocks()


def _run(request: dict[str, Any]) -> dict[str, Any]:
    import pulumi
    from pulumi.runtime import config as runtime_config
    from pulumi.runtime import settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    root = Path(request["root"])
    values, secrets = stack_config(
        request["stack"],
        root,
        Path(request["stack_file"]) if request.get("stack_file") else None,
        request.get("secrets"),
    )
    runtime_config.set_all_config(values, [f"{PROJECT}:{k}" for k in secrets])
    records: list[dict[str, Any]] = []
    mocks = _mocks()
    pulumi.runtime.set_mocks(
        mocks,
        project=PROJECT,
        stack=request["stack"],
        preview=False,
        monitor=_monitor(mocks, records),
    )
    outputs: dict[str, Any] = {}

    def program() -> None:
        runpy.run_path(str(root / "infra" / "__main__.py"), run_name="__main__")
        stack = settings.get_root_resource()
        assert stack is not None
        pulumi.Output.from_input(dict(stack.outputs)).apply(outputs.update)  # type: ignore[attr-defined]

    _sync_await(run_pulumi_func(program))

    from infra import program as helpers
    from infra.config import PulumiSource, load_config
    from infra.workflow import render_actionlint_config

    cfg = load_config(PulumiSource(), ())
    definition_runners = helpers.runner_specs(cfg)
    from pipeline.definition import load_definition

    return {
        "stack": request["stack"],
        "resources": records,
        "outputs": _plain(outputs),
        "secrets": secrets,
        "workflow": helpers.workflow_text(cfg),
        "actionlint": render_actionlint_config(load_definition(cfg.profile), definition_runners),
    }


def record(
    stack: str,
    root: Path = REPO_ROOT,
    stack_file: Path | None = None,
    secrets: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Run the program for ``stack`` in a fresh interpreter and return the recording."""
    request = {
        "stack": stack,
        "root": str(root),
        "stack_file": str(stack_file) if stack_file else None,
        "secrets": dict(secrets or {}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "infra.mock_runtime", json.dumps(request)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise RenderError("\n".join(message[-20:]) or f"exit status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str]) -> int:
    from infra.config import ConfigError

    request = json.loads(argv[0])
    try:
        result = _run(request)
    except (ConfigError, RenderError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        # The Pulumi runtime wraps program errors; surface a ConfigError's message plainly.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ConfigError):
                print(str(cause), file=sys.stderr)
                return EXIT_CONFIG
            cause = cause.__cause__ or cause.__context__
        raise
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

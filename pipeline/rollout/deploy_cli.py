"""``mlcicd deploy set-image`` and ``mlcicd deploy wait``: what the deploy jobs run.

The rendered workflow (``infra/workflow.py``) calls exactly::

    mlcicd deploy set-image --namespace "$MLCICD_NAMESPACE" --rollout NAME --image "$IMAGE@$DIGEST"
    mlcicd deploy wait --namespace "$MLCICD_NAMESPACE" --rollout NAME

on runners that are pods in the target cluster (in-cluster service account; see
``pipeline.rollout.kube_config``). Exit codes: 0 done / Healthy; 1 Degraded, Aborted, timed
out, or the API refused; 2 usage or configuration error (unpinned image, unknown
container, no Kubernetes configuration).

Left out: promoting or aborting from here (``mlcicd canary analyze`` and the Argo
AnalysisTemplate decide; ``mlcicd rollback`` undoes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cli_args import duration_arg
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.rollout.deploy import (
    DEFAULT_CONTAINER,
    DeployUsageError,
    check_pinned,
    set_image,
    wait_for_rollout,
)
from pipeline.rollout.kube_config import KubeConfigError, api_error_message, load_kubernetes_config
from pipeline.rollout.rollback import CustomObjects, RolloutError


def _fail(command: str, message: str, code: int) -> int:
    print(f"mlcicd deploy {command}: {message}", file=sys.stderr)
    return code


def run_set_image(args: argparse.Namespace, api: CustomObjects) -> int:
    """The command with its client passed in (a fake in the tests)."""
    target = f"{args.namespace}/{args.rollout}"
    try:
        change = set_image(api, args.namespace, args.rollout, args.image, args.container)
    except DeployUsageError as exc:
        return _fail("set-image", str(exc), EXIT_USAGE)
    except RolloutError as exc:
        return _fail("set-image", str(exc), EXIT_FAILED)
    except Exception as exc:  # ApiException, urllib3 errors: one line, no traceback
        return _fail("set-image", f"{target}: {api_error_message(exc)}", EXIT_FAILED)
    where = f"rollout {target} container {change.container}"
    if change.changed:
        print(f"{where}: {change.old_image or '(none)'} -> {change.new_image}")
    else:
        print(f"{where}: already {change.new_image}; nothing sent")
    return EXIT_OK


def run_wait(args: argparse.Namespace, api: CustomObjects) -> int:
    target = f"{args.namespace}/{args.rollout}"
    try:
        result = wait_for_rollout(api, args.namespace, args.rollout, args.timeout_s, args.poll_s)
    except RolloutError as exc:
        return _fail("wait", str(exc), EXIT_FAILED)
    except Exception as exc:
        return _fail("wait", f"{target}: {api_error_message(exc)}", EXIT_FAILED)
    state = result.state
    if result.timed_out:
        last = state.progress() if state is not None else "never read"
        return _fail(
            "wait",
            f"{target}: timed out after {args.timeout_s:g} s (last seen: {last})",
            EXIT_FAILED,
        )
    assert state is not None  # a verdict needs a reading
    if state.verdict == "healthy":
        print(f"rollout {target}: Healthy after {result.waited_s:.0f} s")
        return EXIT_OK
    return _fail("wait", f"{target}: {state.phase}: {state.message or 'no message'}", EXIT_FAILED)


def _client(args: argparse.Namespace) -> Any:
    from kubernetes import client

    load_kubernetes_config(args.kubeconfig, args.context)
    return client.CustomObjectsApi()


def _handle(args: argparse.Namespace) -> int:
    command = args.deploy_command
    if command == "set-image":
        try:  # bad input is refused before any cluster is looked for
            check_pinned(args.image)
        except DeployUsageError as exc:
            return _fail(command, str(exc), EXIT_USAGE)
    elif args.timeout_s <= 0 or args.poll_s <= 0:
        return _fail(command, "--timeout and --poll must be > 0", EXIT_USAGE)
    try:
        api = _client(args)
    except KubeConfigError as exc:
        return _fail(command, str(exc), EXIT_USAGE)
    return run_set_image(args, api) if command == "set-image" else run_wait(args, api)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", required=True, help="the Rollout's namespace")
    parser.add_argument("--rollout", required=True, help="Argo Rollout name")
    parser.add_argument("--kubeconfig", help="default: in-cluster, then $KUBECONFIG")
    parser.add_argument("--context", help="kubeconfig context")


def add_arguments(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    set_image_parser = actions.add_parser(
        "set-image",
        help="point the Rollout at a new image",
        description="Point the Argo Rollout's container at an image pinned by digest; the "
        "Rollout then starts its canary steps.",
    )
    _common(set_image_parser)
    set_image_parser.add_argument("--image", required=True, help="REF@sha256:<digest>")
    set_image_parser.add_argument(
        "--container", default=DEFAULT_CONTAINER, help="container name in the pod template"
    )
    wait = actions.add_parser(
        "wait",
        help="wait until the Rollout is Healthy or Degraded",
        description="Poll the Argo Rollout until it is Healthy (exit 0) or Degraded (exit 1).",
    )
    _common(wait)
    wait.add_argument(
        "--timeout", type=duration_arg, default=900.0, dest="timeout_s", metavar="DURATION",
        help="give up after this long, e.g. 15m (default: 15m)",
    )  # fmt: skip
    wait.add_argument(
        "--poll", type=duration_arg, default=5.0, dest="poll_s", metavar="DURATION",
        help="poll interval, e.g. 5s (default: 5s)",
    )  # fmt: skip


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="set the Rollout's image; wait for it",
        description="Deploy to a cluster: set the Argo Rollout's image, then wait for it.",
    )
    actions = parser.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")
    add_arguments(actions)
    parser.set_defaults(handler=_handle)

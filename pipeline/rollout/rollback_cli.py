"""``mlcicd rollback``: roll the Argo Rollout back, then the registry's champion.

Order: the cluster first (that is what stops the harm), then the registry. The
registry step follows the Kubernetes action by default (``--registry auto``):
after ``undo`` the champion alias moves back to the previous champion; after
``abort`` it is left alone, because the pipeline promotes a version to champion
only once its canary has passed, so an aborted canary never was the champion.
``--registry yes|no`` overrides that.

A rerun after a partial failure is safe: abort is idempotent, ``undo
--to-revision N`` sends nothing once the template matches, and
``--no-kubernetes`` redoes just the registry step.

Exit codes: 0 done; 1 the Kubernetes API or the registry failed (the message
names which and what was already done); 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.definition import DefinitionError, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.registry.client import ModelRegistry, RegistryError, default_actor
from pipeline.rollout.kube_config import KubeConfigError, load_kubernetes_config
from pipeline.rollout.kube_config import api_error_message as _k8s_message
from pipeline.rollout.rollback import CustomObjects, ReplicaSets, RolloutError, roll_back


def kubernetes_clients(args: argparse.Namespace) -> tuple[Any, Any]:
    """CustomObjectsApi and AppsV1Api: in-cluster config, else a kubeconfig (see kube_config)."""
    from kubernetes import client

    load_kubernetes_config(args.kubeconfig, args.context)
    return client.CustomObjectsApi(), client.AppsV1Api()


def run_rollback(
    args: argparse.Namespace, api: CustomObjects | None, apps: ReplicaSets | None
) -> int:
    """The command, with the Kubernetes clients passed in (fakes in the tests)."""
    actor = args.actor or default_actor()
    action = args.action
    if not args.no_kubernetes:
        if api is None or apps is None:
            print("mlcicd rollback: no Kubernetes clients", file=sys.stderr)
            return EXIT_USAGE
        try:
            result = roll_back(
                api, apps, args.namespace, args.rollout, args.action, args.to_revision
            )
        except RolloutError as exc:
            print(f"mlcicd rollback: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:  # ApiException, urllib3 errors: one line, no traceback
            print(
                f"mlcicd rollback: {args.namespace}/{args.rollout}: {_k8s_message(exc)}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        action = result.action
        print(f"rollout {result.namespace}/{result.name}: {result.action}: {result.detail}")
    move_champion = args.registry == "yes" or (args.registry == "auto" and action != "abort")
    if not move_champion:
        print("registry: champion left as it is (the aborted canary was never promoted)")
        return EXIT_OK
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        print(
            "mlcicd rollback: no tracking server: pass --tracking-uri or set "
            "MLFLOW_TRACKING_URI (or --registry no)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    name = (
        args.registered_model
        or load_definition(None, None, args.definition).pipeline.registered_model
    )
    try:
        change = ModelRegistry(uri, name).rollback(actor, args.reason)
    except RegistryError as exc:
        done = (
            "" if args.no_kubernetes else " (the rollout step is done; rerun with --no-kubernetes)"
        )
        print(f"mlcicd rollback: {exc}{done}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"registry {name}: champion rolled back to version {change.current} "
        f"(was {change.previous or 'none'}) by {actor}: {args.reason}"
    )
    return EXIT_OK


def _handle(args: argparse.Namespace) -> int:
    if args.no_kubernetes and args.registry == "no":
        print("mlcicd rollback: --no-kubernetes with --registry no does nothing", file=sys.stderr)
        return EXIT_USAGE
    if args.no_kubernetes and args.registry == "auto":
        args.registry = "yes"
    try:
        api, apps = (None, None) if args.no_kubernetes else kubernetes_clients(args)
    except KubeConfigError as exc:
        print(f"mlcicd rollback: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run_rollback(args, api, apps)
    except DefinitionError as exc:
        print(f"mlcicd rollback: {exc}", file=sys.stderr)
        return EXIT_USAGE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollout", default="inference-server", help="Rollout name")
    parser.add_argument("--namespace", default="default")
    parser.add_argument(
        "--action",
        choices=("auto", "abort", "undo"),
        default="auto",
        help="auto: abort a canary in progress, else undo",
    )
    parser.add_argument("--to-revision", type=int, default=0, help="undo to this revision")
    parser.add_argument(
        "--kubeconfig", help="default: in-cluster, then $KUBECONFIG, ~/.kube/config"
    )
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument(
        "--no-kubernetes",
        dest="no_kubernetes",
        action="store_true",
        help="only move the registry's champion back",
    )
    parser.add_argument(
        "--registry",
        choices=("auto", "yes", "no"),
        default="auto",
        help="move the champion alias back (auto: after undo, not abort)",
    )
    parser.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--registered-model", help="default: pipeline.registered_model")
    parser.add_argument("--definition", help="pipeline definition (default: pipeline.toml)")
    parser.add_argument("--actor", help="who (default: $GITHUB_ACTOR, else the OS user)")
    parser.add_argument("--reason", required=True, help="why (recorded in the registry)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "rollback",
        help="roll back the Argo Rollout and the champion",
        description="Abort a canary in progress or undo the Argo Rollout, and move the "
        "registry's champion alias back to the previous champion.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_handle)

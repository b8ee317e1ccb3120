"""Typed accessors over raw config values that collect every problem, naming the key.

Why apart from :mod:`infra.config`: what a valid value looks like (integers, booleans,
``key=value`` node selectors on labels some node can carry, taints) is one concern;
which keys the stack has is another.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

import pulumi

from infra.config_model import Toleration
from infra.kube import cpu_cores

PROJECT = "mlcicd"


class ConfigSource(Protocol):
    """Where raw values come from: Pulumi's config, or a dict in tests."""

    def get(self, key: str) -> str | None: ...

    def get_secret(self, key: str) -> pulumi.Output[str] | None: ...


_TAINT = re.compile(
    r"^([A-Za-z0-9./_-]+)(?:=([A-Za-z0-9._-]*))?:(NoSchedule|PreferNoSchedule|NoExecute)$"
)
_LABEL = re.compile(r"^([A-Za-z0-9./_-]+)=([A-Za-z0-9._-]*)$")

# Node labels something this program installs (or the kubelet) sets, so a selector on
# them can be met. NFD as configured by nvidia-device-plugin 0.17.0 labels NVIDIA PCI
# devices (values.yaml nfd.worker.config: deviceClassWhitelist 02/03, deviceLabelFields
# vendor -> pci-10de.present); GFD's labels are listed in docs/gpu-feature-discovery/
# README.md "Generated Labels" (NVIDIA/k8s-device-plugin@v0.17.0). GFD does NOT set
# nvidia.com/gpu.present (only the GPU Operator or an admin does): such a key must be
# declared in cluster.nodeLabels, a prerequisite the README names.
INSTALLED_NODE_LABELS = frozenset(
    {
        "feature.node.kubernetes.io/pci-10de.present",
        "nvidia.com/gpu.count",
        "nvidia.com/gpu.product",
        "nvidia.com/gpu.family",
        "nvidia.com/gpu.memory",
        "nvidia.com/gpu.machine",
        "nvidia.com/gpu.compute.major",
        "nvidia.com/gpu.compute.minor",
        "nvidia.com/gpu.replicas",
        "nvidia.com/gpu.mode",
        "nvidia.com/cuda.driver-version.major",
        "nvidia.com/cuda.runtime-version.major",
        "nvidia.com/mig.capable",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    }
)


class ConfigError(ValueError):
    """One or more config values are missing or invalid; each line names the key."""


class Reader:
    """Typed accessors that collect every problem instead of stopping at the first."""

    def __init__(self, source: ConfigSource) -> None:
        self.source = source
        self.errors: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.errors.append(f"{PROJECT}:{key}: {message}")

    def text(self, key: str) -> str:
        value = self.source.get(key)
        if value is None:
            self.fail(key, "missing (set it with `pulumi config set` or in Pulumi.yaml)")
            return ""
        return value

    def cpu_quantity(self, key: str) -> str:
        """A Kubernetes CPU quantity of at least one core: ``4``, ``2.5`` or ``1500m``."""
        value = self.text(key)
        if value and not re.fullmatch(r"(\d+(\.\d+)?|\d+m)", value):
            self.fail(
                key, f"expected a CPU quantity such as 4, 2.5 or 1500m, got {json.dumps(value)}"
            )
        elif value and cpu_cores(value) < 1:
            self.fail(key, f"must be at least one core (torch's thread pool), got {value}")
        return value or "1"

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key)
        if value and value not in allowed:
            self.fail(key, f"expected one of {', '.join(allowed)}, got {json.dumps(value)}")
        return value or allowed[0]

    def integer(self, key: str, minimum: int = 0) -> int:
        text = self.text(key)
        try:
            value = int(text)
        except ValueError:
            if text:
                self.fail(key, f"expected integer, got {json.dumps(text)}")
            return minimum
        if value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def boolean(self, key: str) -> bool:
        text = self.text(key)
        if text not in ("true", "false"):
            if text:
                self.fail(key, f"expected boolean (true or false), got {json.dumps(text)}")
            return False
        return text == "true"

    def strings(self, key: str) -> tuple[str, ...]:
        text = self.text(key)
        try:
            value = json.loads(text) if text else []
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of strings, got {json.dumps(text)}")
            return ()
        return tuple(value)

    def secret(self, key: str) -> pulumi.Output[str]:
        value = self.source.get_secret(key)
        if value is None:
            self.fail(key, f"missing secret (set it with `pulumi config set --secret {key}`)")
            return pulumi.Output.secret("")
        return value

    def optional_secret(self, key: str, needed: bool) -> pulumi.Output[str] | None:
        return self.secret(key) if needed else None

    def node_selector(
        self, key: str, node_labels: tuple[str, ...] = ()
    ) -> tuple[tuple[str, str], ...]:
        """``key=value`` pairs, each on a label that some node can actually carry."""
        pairs = []
        for item in self.strings(key):
            match = _LABEL.match(item)
            if match is None:
                self.fail(key, f"expected key=value, got {json.dumps(item)}")
                continue
            label = match.group(1)
            if label not in INSTALLED_NODE_LABELS and label not in node_labels:
                self.fail(
                    key,
                    f"no node gets label {label}: nothing this program installs sets it; "
                    "if your cluster does, add it to cluster.nodeLabels",
                )
            pairs.append((label, match.group(2)))
        return tuple(pairs)

    def tolerations(self, key: str) -> tuple[Toleration, ...]:
        found = []
        for item in self.strings(key):
            match = _TAINT.match(item)
            if match is None:
                self.fail(key, f"expected key=value:Effect or key:Effect, got {json.dumps(item)}")
                continue
            found.append(Toleration(match.group(1), match.group(2), match.group(3)))
        return tuple(found)

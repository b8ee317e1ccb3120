"""The Kubernetes Secrets the workloads read, from Pulumi config or from External Secrets.

Why one helper: every component declares its Secrets as data (name, namespace, keys,
values) through :meth:`SecretSource.secret`, so ``secrets.provider`` switches all of
them at once and the workloads read the same Secret names and keys either way:

- ``pulumi``: a ``v1/Secret`` whose values come from the stack's secret config; they
  pass through Pulumi (encrypted in its state).
- ``external-secrets``: an ``ExternalSecret`` per Secret, against one
  ``ClusterSecretStore`` (the Secrets live in four namespaces, so a namespaced
  ``SecretStore`` would be needed four times). The External Secrets Operator creates
  the Secret from the remote store; no value passes through Pulumi, and the secret
  config keys of in-cluster secrets are not read at all. The remote key of a Secret is
  ``<externalSecrets.keyPrefix>/<secret name>`` and each Secret key is a property of it.

The operator is installed from chart ``external-secrets`` 0.16.2, whose CRDs serve
``external-secrets.io/v1`` (external-secrets/external-secrets@helm-chart-0.16.2:
config/crds/bases/external-secrets.io_externalsecrets.yaml; v1 first served in 0.16.0,
v1beta1 no longer served from 0.17.0, so v1 keeps working across upgrades).

Left out: store back ends other than HashiCorp Vault with Kubernetes auth, and
``PushSecret``. GitHub Actions secrets and the providers' own credentials (kubeconfig,
GitHub token) are Pulumi config in both modes: they are not cluster Secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

import pulumi
import pulumi_kubernetes as k8s

from infra import charts

API_VERSION = "external-secrets.io/v1"
NAMESPACE = "external-secrets"
RELEASE = "external-secrets"
# The chart's controller service account (release fullname), which Vault's Kubernetes
# auth role must trust.
SERVICE_ACCOUNT = RELEASE
REFRESH = "1h"

Provider = Literal["pulumi", "external-secrets"]


@dataclass(frozen=True)
class VaultStore:
    """Where ``external-secrets`` mode reads values: Vault KV v2 with Kubernetes auth."""

    server: str
    path: str
    role: str
    key_prefix: str


@dataclass(frozen=True)
class SecretSource:
    """How components turn secret values into Kubernetes Secrets (see module docstring)."""

    provider: Provider
    store_name: str = ""
    key_prefix: str = ""
    depends_on: tuple[pulumi.Resource, ...] = ()

    @property
    def external(self) -> bool:
        return self.provider == "external-secrets"

    def secret(
        self,
        resource_name: str,
        name: str,
        namespace: pulumi.Input[str],
        values: Mapping[str, pulumi.Input[str] | None],
        opts: pulumi.ResourceOptions,
        labels: Mapping[str, str] | None = None,
        secret_type: str = "Opaque",
        remote: str | None = None,
    ) -> pulumi.Output[str]:
        """Declare Secret ``name`` with ``values``' keys; its name, once it is declared.

        In ``external-secrets`` mode the values are ignored (and normally ``None``), and
        the remote key is ``<prefix>/<remote or name>`` (``remote``: two Secrets, in two
        namespaces, filled from one entry).
        """
        metadata = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if not self.external:
            missing = sorted(k for k, v in values.items() if v is None)
            if missing:
                raise ValueError(f"secret {name}: no value for {', '.join(missing)}")
            secret = k8s.core.v1.Secret(
                resource_name,
                metadata=metadata,
                type=secret_type,
                string_data=dict(values),
                opts=opts,
            )
            return cast(pulumi.Output[str], secret.metadata["name"])
        resource = k8s.apiextensions.CustomResource(
            resource_name,
            api_version=API_VERSION,
            kind="ExternalSecret",
            metadata=metadata,
            spec={
                "refreshInterval": REFRESH,
                "secretStoreRef": {"kind": "ClusterSecretStore", "name": self.store_name},
                "target": {
                    "name": name,
                    "creationPolicy": "Owner",
                    "template": {"type": secret_type},
                },
                "data": [
                    {
                        "secretKey": key,
                        "remoteRef": {
                            "key": f"{self.key_prefix}/{remote or name}",
                            "property": key,
                        },
                    }
                    for key in sorted(values)
                ],
            },
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=list(self.depends_on))
            ),
        )
        return cast(pulumi.Output[str], resource.urn.apply(lambda _: name))


@dataclass(frozen=True)
class ExternalSecretsArgs:
    store: VaultStore


class ExternalSecrets(pulumi.ComponentResource):
    """The External Secrets Operator (pinned chart) and the one ClusterSecretStore."""

    source: SecretSource

    def __init__(
        self, name: str, args: ExternalSecretsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:ExternalSecrets", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        release = charts.release(
            RELEASE, charts.EXTERNAL_SECRETS, NAMESPACE, {"installCRDs": True}, child
        )
        store_name = f"{name}-vault"
        store = k8s.apiextensions.CustomResource(
            f"{name}-store",
            api_version=API_VERSION,
            kind="ClusterSecretStore",
            metadata={"name": store_name},
            spec={"provider": {"vault": _vault(args.store)}},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[release]),
        )
        self.source = SecretSource(
            "external-secrets", store_name, args.store.key_prefix, (release, store)
        )
        self.register_outputs({"store": store_name})


def _vault(store: VaultStore) -> dict[str, object]:
    return {
        "server": store.server,
        "path": store.path,
        "version": "v2",
        "auth": {
            "kubernetes": {
                "mountPath": "kubernetes",
                "role": store.role,
                "serviceAccountRef": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
            }
        },
    }

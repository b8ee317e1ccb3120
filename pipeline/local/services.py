"""The real services the local pipeline runs on one machine: MLflow, Prometheus, an OCI
registry, nginx as the canary traffic splitter, and inference servers.

Why real processes: the pipeline's decisions (register, promote, roll back) are
only worth trusting if they were taken against the same kind of service they
meet in a cluster. Each service here is the Debian or PyPI build of the real
thing, bound to 127.0.0.1 on a free port, logging into the run directory, and
stopped (SIGTERM, then SIGKILL) when the run ends, even on failure.

What persists: the MLflow store and the registry's storage live in the state
directory the caller passes, so a champion survives from one run to the next;
logs and scratch files go in each run's own directory.

Left out: TLS and auth (loopback only), and Kubernetes: the canary's traffic
split is nginx upstream weights, not a service mesh.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.processes import ManagedProcess, free_port


@dataclass
class Service:
    process: ManagedProcess
    url: str

    def stop(self) -> int:
        return self.process.stop()


def _bin(name: str) -> str:
    """A console script from this interpreter's environment (mlflow, mlcicd)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start_mlflow(workdir: Path, log_dir: Path, port: int | None = None) -> Service:
    """``mlflow server`` with a sqlite backend and a local artifact root."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        _bin("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow 3's background job runner forks several consumers; the registry needs none.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = ManagedProcess("mlflow", argv, log_dir, env=env)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/health", timeout_s=120)
    return Service(proc, url)


@dataclass(frozen=True)
class ScrapeTarget:
    address: str  # host:port
    labels: Mapping[str, str]


def prometheus_config(targets: Sequence[ScrapeTarget], scrape_interval: str = "1s") -> str:
    lines = [
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  evaluation_interval: {scrape_interval}",
        "scrape_configs:",
        "  - job_name: inference",
        "    static_configs:",
    ]
    for target in targets:
        lines.append(f"      - targets: ['{target.address}']")
        if target.labels:
            lines.append("        labels:")
            lines.extend(f"          {key}: '{value}'" for key, value in target.labels.items())
    return "\n".join(lines) + "\n"


def start_prometheus(
    targets: Sequence[ScrapeTarget],
    workdir: Path,
    log_dir: Path,
    scrape_interval: str = "1s",
    port: int | None = None,
) -> Service:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets, scrape_interval))
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = ManagedProcess("prometheus", argv, log_dir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/-/ready", timeout_s=60)
    return Service(proc, url)


def start_registry(workdir: Path, log_dir: Path, port: int | None = None) -> Service:
    """The CNCF distribution registry (Debian's ``docker-registry``), no auth, loopback."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = ManagedProcess("registry", ["docker-registry", "serve", str(config)], log_dir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/v2/", timeout_s=30)
    return Service(proc, url)


def nginx_split_config(prefix: Path, port: int, weights: Mapping[str, int]) -> str:
    """An nginx config splitting requests over ``weights`` (address -> percent).

    Addresses at weight 0 get nothing. Every proxied request is logged as
    ``<epoch seconds> <upstream address> <status>`` to ``access.log``, so that the
    split actually served can be counted (:meth:`TrafficSplitter.served_since`).
    """
    live = {address: weight for address, weight in weights.items() if weight > 0}
    if not live:
        raise ValueError("no upstream with a positive weight")
    servers = (
        [f"server {next(iter(live))};"]
        if len(live) == 1
        else [f"server {address} weight={weight};" for address, weight in live.items()]
    )
    upstream = "\n    ".join(servers)
    return f"""worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  log_format split '$msec $upstream_addr $status';
  access_log {prefix / "access.log"} split;
  client_body_temp_path {prefix / "body"};
  proxy_temp_path {prefix / "proxy"};
  fastcgi_temp_path {prefix / "fastcgi"};
  uwsgi_temp_path {prefix / "uwsgi"};
  scgi_temp_path {prefix / "scgi"};
  upstream inference {{
    {upstream}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://inference;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
"""


class TrafficSplitter:
    """nginx in front of the servers of a rollout; weights change by reload (SIGHUP)."""

    def __init__(self, workdir: Path, log_dir: Path, stable: str, port: int | None = None):
        self.prefix = workdir
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.weights: dict[str, int] = {stable: 100}
        self.config = self.prefix / "nginx.conf"
        self._write()
        self.process = ManagedProcess(
            "nginx", ["nginx", "-p", str(self.prefix), "-c", str(self.config)], log_dir
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.process.wait_http(f"{self.url}/health", timeout_s=30)

    def _write(self) -> None:
        self.config.write_text(nginx_split_config(self.prefix, self.port, self.weights))

    def set_weights(self, weights: Mapping[str, int]) -> None:
        self.weights = dict(weights)
        self._write()
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # nginx starts new workers; old ones finish their requests

    def served_since(self, since: float) -> Counter[str]:
        """Requests proxied to each upstream address since ``since`` (epoch seconds)."""
        served: Counter[str] = Counter()
        log = self.prefix / "access.log"
        if not log.exists():
            return served
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and float(parts[0]) >= since:
                served[parts[1]] += 1
        return served

    def stop(self) -> int:
        return self.process.stop()

"""The configs the local pipeline writes for nginx and Prometheus (pure text, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import serving
from pipeline.local.fleet import Fleet
from pipeline.local.services import ScrapeTarget, Service, nginx_split_config, prometheus_config
from pipeline.serving import pod_threads


def _upstream(config: str) -> list[str]:
    block = config.split("upstream inference {", 1)[1].split("}", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_split_config_lists_each_upstream_with_its_weight() -> None:
    config = nginx_split_config(Path("/p"), 8080, {"127.0.0.1:1": 70, "127.0.0.1:2": 30})
    assert _upstream(config) == ["server 127.0.0.1:1 weight=70;", "server 127.0.0.1:2 weight=30;"]
    assert "listen 127.0.0.1:8080;" in config
    assert "access_log /p/access.log split;" in config  # what was served can be counted


def test_split_config_drops_zero_weights_and_refuses_none() -> None:
    config = nginx_split_config(Path("/p"), 8080, {"127.0.0.1:1": 0, "127.0.0.1:2": 100})
    assert _upstream(config) == ["server 127.0.0.1:2;"]
    with pytest.raises(ValueError, match="no upstream"):
        nginx_split_config(Path("/p"), 8080, {"127.0.0.1:1": 0})


def _fleet(*roles: str) -> Fleet:
    ports = {"stable": 1, "canary": 2, "baseline": 3}
    services = {r: Service(None, f"http://127.0.0.1:{ports[r]}") for r in roles}  # type: ignore[arg-type]
    return Fleet(services["stable"], services.get("canary"), services.get("baseline"))


def test_the_baseline_gets_the_canary_share_and_the_stable_the_rest() -> None:
    """Kayenta's baseline: canary and baseline equally loaded, so their latencies compare."""
    fleet = _fleet("stable", "canary", "baseline")
    assert fleet.weights(10) == {"127.0.0.1:2": 10, "127.0.0.1:3": 10, "127.0.0.1:1": 80}
    assert fleet.weights(50) == {"127.0.0.1:2": 50, "127.0.0.1:3": 50, "127.0.0.1:1": 0}
    assert fleet.weights(80) == {"127.0.0.1:2": 80, "127.0.0.1:3": 20, "127.0.0.1:1": 0}
    assert fleet.weights(100) == {"127.0.0.1:2": 100}
    assert fleet.weights(0) == {"127.0.0.1:1": 100}  # rolled back
    assert fleet.reference_label == "baseline"
    labels = {t.address: t.labels["version"] for t in fleet.scrape_targets()}
    assert labels == {"127.0.0.1:1": "stable", "127.0.0.1:2": "canary", "127.0.0.1:3": "baseline"}


def test_a_first_release_serves_alone_and_is_judged_alone() -> None:
    fleet = _fleet("stable")
    assert fleet.weights(10) == {"127.0.0.1:1": 100}
    assert fleet.reference_label is None and fleet.judged is fleet.stable
    assert [t.labels for t in fleet.scrape_targets()] == [{"version": "canary"}]


def test_prometheus_config_labels_each_target() -> None:
    text = prometheus_config(
        [
            ScrapeTarget("127.0.0.1:1", {"version": "stable"}),
            ScrapeTarget("127.0.0.1:2", {"version": "canary"}),
        ],
        scrape_interval="2s",
    )
    parsed = yaml.safe_load(text)
    assert parsed["global"]["scrape_interval"] == "2s"
    configs = parsed["scrape_configs"][0]["static_configs"]
    assert [(c["targets"], c["labels"]["version"]) for c in configs] == [
        (["127.0.0.1:1"], "stable"),
        (["127.0.0.1:2"], "canary"),
    ]


@pytest.mark.parametrize(
    ("cores", "servers", "threads"), [(2, 1, 1), (2, 3, 1), (16, 1, 8), (16, 3, 4)]
)
def test_servers_sharing_the_cores_get_a_share_each_and_one_is_left(
    monkeypatch: pytest.MonkeyPatch, cores: int, servers: int, threads: int
) -> None:
    monkeypatch.setattr(serving.os, "cpu_count", lambda: cores)
    assert pod_threads(servers) == threads

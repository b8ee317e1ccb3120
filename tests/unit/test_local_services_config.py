"""The configs the local pipeline writes for nginx and Prometheus (pure text, no processes)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.local.services import ScrapeTarget, nginx_split_config, prometheus_config


def _upstream(config: str) -> list[str]:
    block = config.split("upstream inference {", 1)[1].split("}", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_split_sends_everything_to_stable_without_a_canary() -> None:
    config = nginx_split_config(Path("/p"), 8080, "127.0.0.1:1", None, 50)
    assert _upstream(config) == ["server 127.0.0.1:1;"]


def test_split_weights_follow_the_canary_percentage() -> None:
    config = nginx_split_config(Path("/p"), 8080, "127.0.0.1:1", "127.0.0.1:2", 30)
    assert _upstream(config) == ["server 127.0.0.1:1 weight=70;", "server 127.0.0.1:2 weight=30;"]


def test_split_at_full_weight_is_canary_only() -> None:
    config = nginx_split_config(Path("/p"), 8080, "127.0.0.1:1", "127.0.0.1:2", 100)
    assert _upstream(config) == ["server 127.0.0.1:2;"]
    assert "listen 127.0.0.1:8080;" in config


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

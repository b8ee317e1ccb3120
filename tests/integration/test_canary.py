"""``mlcicd canary analyze`` against a real Prometheus scraping real inference servers.

Setup (once per module): four ``mlcicd serve`` processes with the built-in
model, labelled by Prometheus as versions ``v-healthy``, ``v-errors`` (20 %
injected 500s: the 10 s windows here hold ~50 requests, too few to tell 5 % from
chance), ``v-slow`` (1.5 s injected latency) and ``v-idle`` (no traffic),
scraped every second. A bounded background load drives the first three. With
``--stable v-healthy`` each fault is judged against a healthy stable in the same
window, as the pipeline's canary is.

Thresholds and limits are the definition's (builtin profile, prod
environment). Only the analysis timing is shortened, through a temporary copy
of pipeline.toml whose builtin canary window/interval/count (and min_requests,
in proportion to the window) are smaller,
so that the module runs in well under a minute and a half.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlcicd.cli import main
from pipeline.canary.promql import CanaryQueries, RelativeQueries
from pipeline.definition import DEFAULT_DEFINITION, load_definition
from pipeline.gates.stats import error_rate_increase_lower
from tests.fixtures.inference_server import InferenceServer, StartServer
from tests.fixtures.prometheus import PrometheusFactory, PrometheusServer, ScrapeTarget

pytestmark = pytest.mark.slow

WINDOW = "10s"  # >= ~10 scrapes at 1 s: increase() and rate() are meaningful
# min_requests scales with the window: the definition's 50 per 30 s is ~17 per 10 s.
TEST_TIMING = {"window": f'"{WINDOW}"', "interval": '"1s"', "count": "2", "min_requests": "15"}
VERSIONS = ("v-healthy", "v-errors", "v-slow", "v-idle")
SERVER_ARGS: dict[str, tuple[str, ...]] = {
    "v-healthy": (),
    "v-errors": ("--fault-error-rate", "0.2", "--fault-seed", "7"),
    "v-slow": ("--fault-latency-ms", "1500"),
    "v-idle": (),
}
LOAD_THREADS = {"v-healthy": 1, "v-errors": 1, "v-slow": 6}
LOAD_DEADLINE_S = 120.0


def fast_definition(directory: Path) -> Path:
    """pipeline.toml with only the builtin canary's timing (and its minimum sample) shortened."""
    text = DEFAULT_DEFINITION.read_text()
    start = text.index("[profiles.builtin.canary]")
    end = text.index("\n[", start + 1)
    block = text[start:end]
    for key, value in TEST_TIMING.items():
        block, replaced = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", block)
        assert replaced == 1, f"profiles.builtin.canary.{key} not found"
    # 15 requests leave 5 above their p66 (the definition refuses a thinner tail).
    block += "\nrelative_quantile = 0.66"
    path = directory / "pipeline.toml"
    path.write_text(text[:start] + block + text[end:])
    return path


class Load:
    """Bounded background traffic: each thread posts small generations until stopped."""

    def __init__(self, targets: dict[str, tuple[str, int]]) -> None:
        self.stop_event = threading.Event()
        self.sent: dict[str, int] = dict.fromkeys(targets, 0)
        self.threads = [
            threading.Thread(target=self._loop, args=(name, url), daemon=True)
            for name, (url, count) in targets.items()
            for _ in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def _loop(self, name: str, url: str) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE_S
        body = {"prompt": "Q: What is the capital of France?\nA:", "max_new_tokens": 4}
        with httpx.Client(timeout=10.0) as client:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                try:
                    client.post(f"{url}/v1/generate", json=body)
                    self.sent[name] += 1
                except httpx.HTTPError:
                    pass
                self.stop_event.wait(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)


@dataclass
class Setup:
    prometheus: PrometheusServer
    servers: dict[str, InferenceServer]
    definition: Path
    load: Load | None = None


@pytest.fixture(scope="module")
def canary_setup(
    inference_server: StartServer,
    module_prometheus: PrometheusFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    with ThreadPoolExecutor(max_workers=len(VERSIONS)) as pool:
        # One torch thread each: four servers share two cores with the rest of the suite.
        futures = {
            v: pool.submit(inference_server, *SERVER_ARGS[v], env={"OMP_NUM_THREADS": "1"})
            for v in VERSIONS
        }
        servers = {v: f.result() for v, f in futures.items()}
    prometheus = module_prometheus(
        [
            ScrapeTarget(f"127.0.0.1:{server.port}", {"version": version})
            for version, server in servers.items()
        ]
    )
    setup = Setup(prometheus, servers, fast_definition(tmp_path_factory.mktemp("definition")))
    try:
        yield setup
    finally:
        if setup.load is not None:
            setup.load.stop()
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:  # drain in parallel
            list(pool.map(lambda server: server.stop(), servers.values()))


def analyze(capsys: pytest.CaptureFixture[str], setup: Setup, *args: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    code = main(
        ["canary", "analyze", "--prometheus-url", setup.prometheus.url, "--profile", "builtin",
         "--environment", "prod", "--definition", str(setup.definition), *args]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def scalar(prometheus: PrometheusServer, promql: str) -> float | None:
    result = prometheus.query(promql)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def queries(version: str) -> CanaryQueries:
    return CanaryQueries(f'job="inference", version="{version}"', WINDOW)


def test_no_traffic_is_inconclusive_and_nan_is_never_a_success(
    canary_setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    prom = canary_setup.prometheus
    wait_for(lambda: prom.targets_up() == len(VERSIONS), 20, "all targets scraped")
    idle = queries("v-idle")
    # The histogram exists with zero counts: its p99 over a zero rate is NaN.
    wait_for(lambda: scalar(prom, idle.p99_latency_seconds) is not None, 15, "idle histogram")
    assert math.isnan(scalar(prom, idle.p99_latency_seconds) or 0.0)
    assert scalar(prom, idle.request_count) is None  # no request series at all: empty

    code, verdict, err = analyze(capsys, canary_setup, "--version", "v-idle")
    assert code == 3, err
    assert verdict["verdict"] == "inconclusive"
    p99 = next(m for m in verdict["metrics"] if m["name"] == "p99-latency")
    assert p99["measurements"][0]["raw"] == "nan"
    assert p99["measurements"][0]["phase"] == "Inconclusive"
    assert "query p99-latency (result < " in err

    # A handful of successful requests: every rate is perfect, yet below min_requests.
    gate = load_definition("builtin", "prod", canary_setup.definition).canary
    few = max(2, gate.min_requests // 4)
    url = f"{canary_setup.servers['v-idle'].url}/v1/generate"
    body = {"prompt": "hello", "max_new_tokens": 2}
    # Prometheus counts increases of a series it has seen: first make the series exist.
    httpx.post(url, json=body, timeout=10).raise_for_status()
    series = 'inference_requests_total{version="v-idle"}'
    wait_for(lambda: prom.query(series), 15, "the idle request series")
    for _ in range(few):
        httpx.post(url, json=body, timeout=10).raise_for_status()
    wait_for(lambda: (scalar(prom, idle.request_count) or 0) >= few - 1, 15, "the few requests")
    code, verdict, _ = analyze(capsys, canary_setup, "--version", "v-idle")
    assert code == 3
    success = next(m for m in verdict["metrics"] if m["name"] == "success-rate")
    assert success["measurements"][0]["value"] == 1.0
    assert success["measurements"][0]["phase"] == "Inconclusive"
    assert "need" in success["measurements"][0]["message"]


@pytest.fixture(scope="module")
def loaded(canary_setup: Setup) -> Setup:
    """Traffic on healthy/errors/slow until each window holds enough requests."""
    servers = canary_setup.servers
    canary_setup.load = Load({v: (servers[v].url, n) for v, n in LOAD_THREADS.items()})
    gate = load_definition("builtin", "prod", canary_setup.definition).canary
    prom = canary_setup.prometheus

    def enough() -> bool:
        counts = [scalar(prom, queries(v).request_count) for v in LOAD_THREADS]
        return all(c is not None and c >= 2 * gate.min_requests for c in counts)

    wait_for(enough, 40, "enough requests in every window")
    return canary_setup


def test_healthy_canary_is_successful(
    loaded: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, verdict, err = analyze(capsys, loaded, "--version", "v-healthy", "--out", str(tmp_path))
    assert code == 0, err
    assert verdict["verdict"] == "successful"
    assert json.loads((tmp_path / "canary.json").read_text()) == verdict  # --out is a directory
    gate = load_definition("builtin", "prod", loaded.definition).canary
    assert all(m["phase"] == "Successful" for m in verdict["metrics"])
    assert all(len(m["measurements"]) == 2 for m in verdict["metrics"])  # count from the file
    assert verdict["limits"]["min_requests"] == gate.min_requests
    assert "#2 " in err and "success-rate: canary=1 -> Successful" in err
    assert verdict["judged_by"].startswith("absolute ceilings only")


def test_injected_errors_fail_against_the_stable_and_the_pair_reports_the_delta(
    loaded: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, verdict, err = analyze(capsys, loaded, "--stable", "v-healthy", "--canary", "v-errors")
    assert code == 1, err
    assert verdict["verdict"] == "failed"
    phases = {m["name"]: m["phase"] for m in verdict["metrics"]}
    assert phases["error-rate-vs-stable"] == "Failed"
    assert phases["latency-vs-stable"] != "Failed"  # errors, not slowness
    assert any(r.startswith("error-rate-vs-stable Failed") for r in verdict["reasons"])
    tick = verdict["ticks"][0]
    assert tick["canary"]["error-rate"] > 0 and tick["stable"]["error-rate"] == 0
    assert tick["delta"]["error-rate"] == pytest.approx(tick["canary"]["error-rate"])
    assert "error-rate: canary=" in err and " stable=0 delta=+" in err


def test_injected_latency_fails_against_the_stable(
    loaded: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, verdict, err = analyze(capsys, loaded, "--stable", "v-healthy", "--canary", "v-slow")
    assert code == 1, err
    phases = {m["name"]: m["phase"] for m in verdict["metrics"]}
    assert phases["latency-vs-stable"] == "Failed" and phases["ttft-vs-stable"] == "Failed"
    assert phases["error-rate-vs-stable"] != "Failed"  # slow, not broken


def test_the_promql_error_bound_is_the_python_formula(loaded: Setup) -> None:
    """Prometheus computes the Agresti-Caffo bound that pipeline.gates.stats computes."""
    prom = loaded.prometheus
    gate = load_definition("builtin", "prod", loaded.definition).canary
    canary, stable = queries("v-errors"), queries("v-healthy")
    relative = RelativeQueries.for_gate(canary, stable, gate)
    at = time.time()

    def value(promql: str) -> float:
        response = httpx.get(
            f"{prom.url}/api/v1/query", params={"query": promql, "time": at}, timeout=5.0
        )
        return float(response.json()["data"]["result"][0]["value"][1])

    expected = error_rate_increase_lower(
        value(canary.error_count), value(canary.request_count),
        value(stable.error_count), value(stable.request_count), gate.confidence,
    )  # fmt: skip
    assert value(relative.error_rate_increase_lower) == pytest.approx(expected, abs=1e-9)


def test_prometheus_down_errors_until_the_consecutive_error_limit(
    canary_setup: Setup, prometheus: PrometheusFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    down = prometheus([])
    down.stop()
    code, verdict, err = analyze(
        capsys, Setup(down, canary_setup.servers, canary_setup.definition), "--version", "v-healthy"
    )
    gate = load_definition("builtin", "prod", canary_setup.definition).canary
    assert code == 1, err
    assert verdict["verdict"] == "failed" and verdict["phase"] == "Error"
    for metric in verdict["metrics"]:
        assert metric["error"] == gate.consecutive_error_limit + 1
        assert metric["count"] == 0
        assert "unreachable (ConnectionError)" in metric["measurements"][0]["message"]

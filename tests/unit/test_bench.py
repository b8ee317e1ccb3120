"""The benchmark's arithmetic: request plans, aggregation, target verdicts, reports.

No servers here: load results are built from RequestRecords directly, and the
targets are the definition's own (thresholds are read, never restated), so a
changed threshold in pipeline.toml moves these tests with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlcicd.cli import main
from pipeline.bench.machine import isa_label
from pipeline.bench.paired import PairedCell, PairedRound, paired_cell
from pipeline.bench.peer import PeerCell, fastest_per_batch
from pipeline.bench.report import build_document, render_markdown, render_plot, write_json
from pipeline.bench.runner import peer_batches
from pipeline.bench.targets import (
    GIB,
    Cell,
    cell_from_load,
    evaluate_targets,
    plan_requests,
)
from pipeline.definition import Bench, BenchTarget, DefinitionError, load_definition, resolve
from pipeline.load.generator import LoadResult, RequestRecord


@pytest.fixture(scope="module")
def bench() -> Bench:
    found = load_definition("cpu").bench
    assert found is not None
    return found


def _target(bench: Bench, metric: str) -> BenchTarget:
    return next(t for t in bench.targets if t.metric == metric)


def _threshold(target: BenchTarget) -> float:
    value = target.min if target.min is not None else target.max
    assert value is not None
    return value


def _load(records: list[RequestRecord], concurrency: int, duration_s: float) -> LoadResult:
    return LoadResult(
        url="http://127.0.0.1:1",
        mode="concurrency",
        concurrency=concurrency,
        rate=None,
        warmup=0,
        max_new_tokens=4,
        duration_s=duration_s,
        records=tuple(records),
    )


def _ok(index: int, e2e: float, tokens: int = 4) -> RequestRecord:
    gaps = (0.01,) * (tokens - 1)
    return RequestRecord(index, True, 0.0, e2e, e2e / 2, gaps, tokens, 200)


# --- request plans ---------------------------------------------------------------


def test_plan_is_nominal_without_a_previous_rate(bench: Bench) -> None:
    plan = plan_requests(16, bench, None)
    assert plan.requests == max(bench.requests_per_client * 16, bench.min_requests)
    assert plan.note is None and plan.skipped is None


def test_plan_is_nominal_when_it_fits_the_budget(bench: Bench) -> None:
    nominal = max(bench.requests_per_client * 4, bench.min_requests)
    fast = 10 * nominal / bench.cell_budget_s
    assert plan_requests(4, bench, fast).requests == nominal


def test_plan_shrinks_to_the_budget_and_says_so(bench: Bench) -> None:
    level = 16
    nominal = max(bench.requests_per_client * level, bench.min_requests)
    # A rate at which the nominal count takes twice the budget, but one request
    # per client still fits.
    rate = nominal / (2 * bench.cell_budget_s)
    plan = plan_requests(level, bench, rate)
    assert level <= plan.requests < nominal
    assert plan.note is not None and "budget" in plan.note
    assert plan.skipped is None


def test_plan_skips_when_not_even_one_request_per_client_fits(bench: Bench) -> None:
    level = 64
    rate = level / (4 * bench.cell_budget_s)
    plan = plan_requests(level, bench, rate)
    assert plan.requests == 0
    assert plan.skipped is not None and "not run" in plan.skipped


# --- aggregation -----------------------------------------------------------------


def test_cell_counts_5xx_and_stream_errors_as_server_errors_but_not_429() -> None:
    records = [
        _ok(0, 0.2),
        _ok(1, 0.4),
        RequestRecord(2, False, 0.0, 0.01, status_code=500, error_kind="http_500"),
        RequestRecord(3, False, 0.0, 0.01, status_code=200, error_kind="stream_error"),
        RequestRecord(4, False, 0.0, 0.01, status_code=429, error_kind="http_429"),
    ]
    cell = cell_from_load("m", "ours", _load(records, 4, 2.0), 5 * GIB, 0.1)
    assert cell.requests == 5 and cell.ok == 2
    assert cell.server_errors == 2
    assert cell.errors == {"http_500": 1, "stream_error": 1, "http_429": 1}
    assert cell.tokens_per_s == pytest.approx(8 / 2.0)
    assert cell.requests_per_s == pytest.approx(2 / 2.0)
    assert cell.e2e_ms is not None and cell.e2e_ms["max_ms"] == pytest.approx(400)
    assert cell.itl_ms is not None and cell.itl_ms["count"] == 6
    assert cell.measured


def test_a_cell_without_successes_is_not_measured() -> None:
    records = [RequestRecord(0, False, 0.0, 0.01, status_code=422, error_kind="http_422")]
    cell = cell_from_load("m", "ours", _load(records, 1, 1.0), GIB, 0.0)
    assert not cell.measured and cell.e2e_ms is None


# --- targets ---------------------------------------------------------------------


def _cell(model: str, server: str, concurrency: int, **kw: object) -> Cell:
    base: dict[str, object] = {"requests": 10, "ok": 10, "duration_s": 1.0}
    base.update(kw)
    return Cell(model, server, concurrency, **base)  # type: ignore[arg-type]


def test_throughput_target_passes_above_and_misses_below() -> None:
    target = BenchTarget(
        id="t", description="d", model="m", concurrency=16, metric="tokens_per_s", min=100.0
    )
    floor = _threshold(target)
    for factor, status in ((1.1, "PASS"), (0.9, "MISS")):
        cells = [_cell(target.model, "ours", target.concurrency, tokens_per_s=floor * factor)]
        [outcome] = evaluate_targets([target], cells, {})
        assert outcome.status == status
        assert outcome.measured == pytest.approx(floor * factor)


def test_speedup_is_ours_over_the_baseline_at_the_same_concurrency(bench: Bench) -> None:
    target = _target(bench, "speedup_vs_baseline")
    need = _threshold(target)
    ours = _cell(target.model, "ours", target.concurrency, tokens_per_s=100.0)
    base = _cell(target.model, "baseline", target.concurrency, tokens_per_s=100.0 / (need * 2))
    other = _cell(target.model, "baseline", target.concurrency * 2, tokens_per_s=1e9)
    [outcome] = evaluate_targets([target], [ours, base, other], {})
    assert outcome.status == "PASS"
    assert outcome.measured == pytest.approx(need * 2)


def test_speedup_is_not_measured_when_the_baseline_cell_was_skipped(bench: Bench) -> None:
    target = _target(bench, "speedup_vs_baseline")
    ours = _cell(target.model, "ours", target.concurrency, tokens_per_s=100.0)
    skipped = Cell(target.model, "baseline", target.concurrency, skipped="not run: budget")
    [outcome] = evaluate_targets([target], [ours, skipped], {})
    assert outcome.status == "NOT MEASURED" and outcome.measured is None
    assert "not run: budget" in outcome.detail


def test_latency_ratio_and_itl_targets(bench: Bench) -> None:
    ratio = _target(bench, "e2e_p99_over_p50")
    itl = BenchTarget(
        id="i", description="d", model="m", concurrency=1, metric="itl_p50_ms", max=35.0
    )
    limit_ratio, limit_itl = _threshold(ratio), _threshold(itl)
    e2e = {"count": 10, "mean_ms": 1.0, "p50_ms": 100.0, "p95_ms": 1.0, "p99_ms": 0.0, "max_ms": 1}
    e2e["p99_ms"] = 100.0 * limit_ratio * 1.5
    gaps = {"count": 9, "mean_ms": 1.0, "p50_ms": limit_itl * 0.5, "p95_ms": 1.0, "p99_ms": 1.0}
    cells = [
        _cell(ratio.model, "ours", ratio.concurrency, e2e_ms=e2e),
        _cell(itl.model, "ours", itl.concurrency, itl_ms=gaps),
    ]
    by_id = {o.id: o for o in evaluate_targets([ratio, itl], cells, {})}
    assert by_id[ratio.id].status == "MISS"
    assert by_id[ratio.id].measured == pytest.approx(limit_ratio * 1.5)
    assert by_id[itl.id].status == "PASS"


def _peer(model: str, batch: int, quantization: str = "float32", **kw: object) -> PeerCell:
    base: dict[str, object] = {"runs": 3, "threads": 2}
    base.update(kw)
    return PeerCell(model, quantization, batch, **base)  # type: ignore[arg-type]


def test_peer_throughput_ratio_uses_the_targets_peer_batch_and_fp32(bench: Bench) -> None:
    wide = next(t for t in bench.targets if t.metric == "tokens_per_s_vs_peer" and t.peer_batch)
    need = _threshold(wide)
    assert wide.peer_batch is not None and wide.peer_batch != wide.concurrency
    ours = _cell(wide.model, "ours", wide.concurrency, tokens_per_s=300.0)
    peers = [
        _peer(wide.model, wide.peer_batch, tokens_per_s=300.0 / (need * 1.5)),
        _peer(wide.model, wide.concurrency, tokens_per_s=1e9),  # not the batch compared with
        _peer(wide.model, wide.peer_batch, "int8", tokens_per_s=1e9),  # not fp32
    ]
    [outcome] = evaluate_targets([wide], [ours], {}, peers)
    assert outcome.status == "PASS"
    assert outcome.measured == pytest.approx(need * 1.5)
    assert f"batch {wide.peer_batch}" in outcome.detail


def test_itl_over_the_peers_step_at_batch_one(bench: Bench) -> None:
    paired = _target(bench, "itl_p50_vs_peer_step_paired")
    target = paired.model_copy(update={"metric": "itl_p50_vs_peer_step"})  # the cells' ratio
    limit = _threshold(target)
    gaps = {"count": 9, "mean_ms": 1.0, "p50_ms": 30.0 * limit * 1.1, "p95_ms": 1.0, "p99_ms": 1}
    ours = _cell(target.model, "ours", target.concurrency, itl_ms=gaps)
    peer = _peer(target.model, target.peer_batch or target.concurrency, step_ms=30.0)
    [outcome] = evaluate_targets([target], [ours], {}, [peer])
    assert outcome.status == "MISS"
    assert outcome.measured == pytest.approx(limit * 1.1)


def _round(ours: float, peer: float) -> PairedRound:
    return PairedRound(ours_itl_ms=ours, peer_step_ms=peer)


def test_the_paired_target_is_the_median_of_its_rounds_ratios(bench: Bench) -> None:
    """Each round's ratio is taken in one minute of the host; the cells' figures are not."""
    target = _target(bench, "itl_p50_vs_peer_step_paired")
    limit = _threshold(target)
    # A slow minute slows both sides of its round: the ratios stay near 1.1 x the limit.
    rounds = [_round(11 * limit, 10.0), _round(22 * limit, 20.0), _round(12 * limit, 10.0)]
    cell = paired_cell(target.model, rounds, requests_per_round=3, peer_processes=2)
    assert cell.ratio == pytest.approx(1.1 * limit)
    assert (cell.ours_itl_ms, cell.peer_step_ms) == pytest.approx((12 * limit, 10.0))
    # The cells disagree (ours 0.5 x the limit over the peer): the paired figure decides.
    gaps = {"count": 9, "mean_ms": 1.0, "p50_ms": 5.0 * limit, "p95_ms": 1.0, "p99_ms": 1}
    ours = _cell(target.model, "ours", 1, itl_ms=gaps)
    [outcome] = evaluate_targets([target], [ours], {}, [_peer(target.model, 1, step_ms=10.0)],
                                 [cell])  # fmt: skip
    assert outcome.status == "MISS" and outcome.measured == pytest.approx(1.1 * limit)
    assert "median of 3 rounds' ratios" in outcome.detail
    passing = paired_cell(target.model, [_round(0.9 * limit, 1.0)], 3, 2)
    [good] = evaluate_targets([target], [], {}, [], [passing])
    assert good.status == "PASS"


def test_the_paired_target_is_not_measured_without_its_phase(bench: Bench) -> None:
    target = _target(bench, "itl_p50_vs_peer_step_paired")
    ours = _cell(target.model, "ours", 1, itl_ms={"count": 9, "p50_ms": 1.0})
    [absent] = evaluate_targets([target], [ours], {}, [_peer(target.model, 1, step_ms=10.0)])
    assert absent.status == "NOT MEASURED" and "not run" in absent.detail
    failed = PairedCell(target.model, skipped="failed: a peer process failed (exit 1): boom")
    [outcome] = evaluate_targets([target], [ours], {}, [], [failed])
    assert outcome.status == "NOT MEASURED" and "boom" in outcome.detail


def test_a_paired_target_must_be_one_client_against_batch_one() -> None:
    from pipeline.definition import read_raw

    raw = json.loads(json.dumps(read_raw()))
    index, paired = next(
        (i, t) for i, t in enumerate(raw["bench"]["targets"])
        if t["metric"] == "itl_p50_vs_peer_step_paired"
    )  # fmt: skip
    paired["concurrency"] = 16
    with pytest.raises(DefinitionError, match=rf"bench\.targets\.{index}.*concurrency = 16"):
        resolve(raw, "cpu")
    paired["concurrency"], paired["peer_batch"] = 1, 4
    with pytest.raises(DefinitionError, match="peer_batch = 4"):
        resolve(raw, "cpu")


def test_peer_targets_are_not_measured_when_the_peer_was_skipped(bench: Bench) -> None:
    target = _target(bench, "tokens_per_s_vs_peer")
    ours = _cell(target.model, "ours", target.concurrency, tokens_per_s=100.0)
    batch = target.peer_batch or target.concurrency
    skipped = PeerCell(target.model, "float32", batch, skipped="not run: ctranslate2 missing")
    [outcome] = evaluate_targets([target], [ours], {}, [skipped])
    assert outcome.status == "NOT MEASURED" and "ctranslate2 missing" in outcome.detail


def test_the_peer_counts_its_fastest_process_at_each_batch() -> None:
    """A peer process that ran slow throughout must not flatter our ratios."""
    slow = [_peer("gpt2", 1, tokens_per_s=10.0, step_ms=90.0),
            _peer("gpt2", 16, tokens_per_s=130.0, step_ms=100.0)]  # fmt: skip
    fast = [_peer("gpt2", 1, tokens_per_s=33.0, step_ms=27.0),
            _peer("gpt2", 16, skipped="not run: budget")]  # fmt: skip
    one, sixteen = fastest_per_batch([slow, fast])
    assert (one.tokens_per_s, one.step_ms, one.process_tokens_per_s) == (33.0, 27.0, (10.0, 33.0))
    assert sixteen.tokens_per_s == 130.0 and sixteen.process_tokens_per_s == (130.0,)
    unmeasured = fastest_per_batch([[_peer("gpt2", 4, skipped="first")],
                                    [_peer("gpt2", 4, skipped="second")]])  # fmt: skip
    assert [cell.skipped for cell in unmeasured] == ["first"]


def test_peer_batches_are_the_levels_plus_any_targets_peer_batch(bench: Bench) -> None:
    wide = next(t for t in bench.targets if t.peer_batch)
    batches = peer_batches(bench, wide.model, (1, 16))
    assert batches == sorted({1, 16, wide.peer_batch})
    assert peer_batches(bench, "another-model", (4, 1)) == [1, 4]


def test_isa_label_names_the_widest_vector_isa() -> None:
    assert isa_label(["avx2", "fma"]) == "AVX2"
    assert isa_label(["avx2", "avx512f"]) == "AVX-512"
    assert isa_label(["avx2", "avx512f", "amx_tile"]) == "AMX"


def test_memory_target_is_peak_rss_minus_weights(bench: Bench) -> None:
    target = _target(bench, "rss_over_weights_gib")
    allowance = _threshold(target)
    weights = {target.model: 2 * GIB}
    inside = _cell(target.model, "ours", target.concurrency, peak_rss_bytes=int(2.5 * GIB))
    [ok] = evaluate_targets([target], [inside], weights)
    assert ok.measured == pytest.approx(0.5) and (ok.status == "PASS") == (allowance >= 0.5)
    over = int((2 + allowance + 0.25) * GIB)
    outside = _cell(target.model, "ours", target.concurrency, peak_rss_bytes=over)
    [miss] = evaluate_targets([target], [outside], weights)
    assert miss.status == "MISS"
    [unknown] = evaluate_targets([target], [inside], {})
    assert unknown.status == "NOT MEASURED"


def test_server_error_target_counts_5xx(bench: Bench) -> None:
    target = _target(bench, "server_errors")
    clean = _cell(target.model, "ours", target.concurrency, server_errors=0)
    broken = _cell(target.model, "ours", target.concurrency, server_errors=3)
    assert evaluate_targets([target], [clean], {})[0].status == "PASS"
    assert evaluate_targets([target], [broken], {})[0].status == "MISS"


def test_every_target_is_not_measured_without_cells(bench: Bench) -> None:
    outcomes = evaluate_targets(bench.targets, [], {})
    assert {o.status for o in outcomes} == {"NOT MEASURED"}
    assert len(outcomes) == len(bench.targets)


def test_a_target_must_have_exactly_one_bound() -> None:
    from pipeline.definition import read_raw

    raw = read_raw()
    broken = json.loads(json.dumps(raw))
    broken["bench"]["targets"][0]["max"] = broken["bench"]["targets"][0].get("min", 1.0)
    broken["bench"]["targets"][0]["min"] = 1.0
    with pytest.raises(DefinitionError, match=r"bench\.targets\.0\.max"):
        resolve(broken, "cpu")


# --- reports and CLI -------------------------------------------------------------


def _document(bench: Bench, foreign: float, peer_foreign: float = 0.0) -> dict[str, object]:
    return build_document(**_document_args(bench, foreign, peer_foreign))


def _document_args(bench: Bench, foreign: float = 0.0, peer_foreign: float = 0.0) -> dict[str, Any]:
    records = [_ok(i, 0.1 * (i + 1)) for i in range(5)]
    ours = cell_from_load("builtin", "ours", _load(records, 4, 1.0), GIB // 2, foreign)
    base = cell_from_load("builtin", "baseline", _load(records[:2], 4, 2.0), GIB // 2, 0.0)
    skipped = Cell("builtin", "baseline", 64, skipped="not run: budget")
    return dict(
        command="mlcicd bench --quick",
        machine={"nproc": 2, "cpu_model": "test", "memory_gib": 1, "torch": "x", "cuda": None}
        | {"torch_threads": 2, "isa": "AVX2", "cpu_flags": ["avx2"], "isa_forced": None}
        | {"torch_cpu_capability": "AVX2", "onednn": "3", "ctranslate2": "4"},
        config=bench.model_dump(mode="json"),
        weights={"builtin": GIB // 100},
        floors={},
        servers={"ours": "python -m mlcicd.cli serve"},
        cells=[ours, base, skipped],
        peers=[
            _peer(
                "builtin",
                4,
                tokens_per_s=1000.0,
                step_ms=1.5,
                process_tokens_per_s=(1000.0, 310.5),
                foreign_cpu_cores=peer_foreign,
            ),
            _peer("builtin", 4, "int8", tokens_per_s=2000.0, step_ms=1.0),
            PeerCell("builtin", "float32", 64, skipped="not run: peer budget"),
        ],
        targets=evaluate_targets(bench.targets, [ours, base], {}),
        started_at="now",
        duration_s=1.0,
    )


def test_reports_label_a_noisy_run_and_show_skips(bench: Bench, tmp_path: Path) -> None:
    noisy = _document(bench, foreign=1.0)
    quiet = _document(bench, foreign=0.0)
    assert noisy["noisy"] is True and quiet["noisy"] is False
    text = render_markdown(noisy)
    assert "NOISY RUN" in text and "NOISY RUN" not in render_markdown(quiet)
    assert "not run: budget" in text
    assert "NOT MEASURED" in text
    assert "ISA AVX2" in text and "oneDNN 3" in text and "CTranslate2 4" in text
    assert "| builtin | int8 | 4 | 2000.0 |" in text and "not run: peer budget" in text
    assert "fastest of 2 processes (1000.0, 310.5 tokens/s)" in text
    # ours at c=4 against the peer at batch 4: fp32, int8 and the naive server.
    ours_tps = noisy["cells"][0]["tokens_per_s"]  # type: ignore[index]
    assert f"| {ours_tps / 1000:.2f}x | {ours_tps / 2000:.2f}x |" in text
    write_json(noisy, tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text())["cells"][2]["skipped"]
    render_plot(noisy, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_shows_each_paired_round_and_counts_its_foreign_load(bench: Bench) -> None:
    cell = paired_cell("builtin", [_round(12.0, 10.0), _round(30.0, 20.0)], 3, 2, 0.4)
    document = build_document(**{**_document_args(bench), "paired": [cell]})
    assert document["noisy"] is True and document["paired"][0]["ratio"] == 1.35
    text = render_markdown(document)
    assert "ms: 12.0/10.0, 30.0/20.0. Median ratio **1.35**" in text
    skipped = PairedCell("builtin", skipped="not run: ctranslate2 is not installed")
    text = render_markdown(build_document(**{**_document_args(bench), "paired": [skipped]}))
    assert "not measured: not run: ctranslate2 is not installed." in text


def test_a_peer_process_slowed_by_the_host_makes_the_run_noisy(bench: Bench) -> None:
    """A slowed peer flatters every ratio against it, so it counts like a server cell."""
    document = _document(bench, foreign=0.0, peer_foreign=0.6)
    assert document["noisy"] is True and document["max_foreign_cpu_cores"] == 0.6
    text = render_markdown(document)
    assert "NOISY RUN" in text
    assert "| builtin | float32 | 4 | 1000.0 | 1.5 | 0 | 3 | 2 | 0.60 |" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--servers", "ours,nginx"], "--servers"),
        (["--min-requests", "0"], "--min-requests"),
        (["--profile", "nope"], "profiles.nope"),
        (["--engine", "ctranslate2", "--quantize", "int8"], "run them separately"),
        (["--engine", "ctranslate2", "--models", "org/hub-model"], "not a local directory"),
    ],
)
def test_bench_cli_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_cli_rejects_a_budget_that_is_not_a_duration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--cell-budget", "150"])  # a duration has a unit: 150s
    assert exited.value.code == 2
    assert "--cell-budget" in capsys.readouterr().err


def test_bench_cli_rejects_a_bad_concurrency_list() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--concurrency", "1,zero"])
    assert exited.value.code == 2


def test_bench_quantize_adds_each_models_int8_candidate_without_a_peer(tmp_path: Path) -> None:
    import argparse

    from pipeline.bench.cli import _resolve
    from pipeline.bench.runner import _is_quantized_candidate

    args = argparse.Namespace(
        profile="cpu", definition=None, quick=True, models=None, concurrency=None,
        requests_per_client=None, min_requests=None, warmup_requests=None,
        max_new_tokens=None, cell_budget_s=None, torch_threads=None,
        servers=("ours", "baseline", "peer"), quantize="int8", engine="torch",
    )  # fmt: skip
    bench, _, peer = _resolve(args)
    assert bench.models[0] == "builtin" and len(bench.models) == 2
    assert _is_quantized_candidate(bench.models[1]) and not _is_quantized_candidate("builtin")
    assert peer


def test_the_paired_phase_follows_our_levels_only_for_models_with_a_paired_target(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wiring only: which server gets the phase, and for which model; the phase itself
    runs for real in tests/integration/test_bench_paired.py."""
    import pipeline.bench.runner as runner

    target = _target(bench, "itl_p50_vs_peer_step_paired")
    paired_at: list[tuple[str, str]] = []

    def fake_server(
        kind: str, model: str, *args: Any, after_levels: Any = None, **kw: Any
    ) -> list[Cell]:
        if after_levels is not None:
            after_levels(f"http://{kind}-{model}")
        return []

    def fake_paired(model: str, url: str, *args: Any) -> PairedCell:
        paired_at.append((model, url))
        return PairedCell(model, skipped="fake")

    monkeypatch.setattr(runner, "model_floor", lambda model: {"weights_bytes": 1})
    monkeypatch.setattr(runner, "measure_peer", lambda *args: [])
    monkeypatch.setattr(runner, "measure_server", fake_server)
    monkeypatch.setattr(runner, "measure_paired", fake_paired)
    models = ("builtin", target.model)
    *_, paired = runner.run_bench(bench, models, (1,), tmp_path, lambda _: None)
    assert paired_at == [(target.model, f"http://ours-{target.model}")]
    assert [cell.model for cell in paired] == [target.model]
    paired_at.clear()
    runner.run_bench(bench, models, (1,), tmp_path, lambda _: None, peer=False)
    assert paired_at == []  # no peer, no pairing

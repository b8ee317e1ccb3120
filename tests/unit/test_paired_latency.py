"""The latency gate paired with the champion: the judgement and the interleaved load."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.definition import load_definition
from pipeline.gates.cli import latency_verdict
from pipeline.gates.latency import NO_CHAMPION, measure_samples
from pipeline.load import paired
from pipeline.load.generator import LoadResult, RequestRecord

DEFINITION = load_definition("builtin")


def _run(seed: int, n: int = 200, extra_s: float = 0.0, url: str = "http://c") -> LoadResult:
    """A load result whose TTFT/ITL/e2e are log-normal around 40/5/200 ms, plus ``extra_s``."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        jitter = math.exp(rng.gauss(0, 0.25))
        ttft = 0.04 * jitter + extra_s
        gaps = tuple(0.005 * math.exp(rng.gauss(0, 0.2)) for _ in range(8))
        records.append(RequestRecord(i, True, i * 0.01, ttft + sum(gaps), ttft, gaps, 9, 200))
    return LoadResult(url, "concurrency", 4, None, 0, 9, n * 0.01, tuple(records))


def test_a_candidate_like_its_champion_passes_and_says_how_it_was_judged() -> None:
    verdict = latency_verdict(DEFINITION, _run(1), _run(2, url="http://champ"))
    assert verdict.passed, verdict.reasons
    assert "paired with the champion (http://champ)" in verdict.basis
    assert [row.name for row in verdict.relative] == ["ttft", "itl", "e2e"]
    ttft = verdict.relative[0]
    assert 0.8 < ttft.ratio_p50 < 1.2 and ttft.p_value > DEFINITION.latency.significance


def test_a_candidate_300_ms_slower_fails_for_that_reason() -> None:
    verdict = latency_verdict(DEFINITION, _run(1, extra_s=0.3), _run(2))
    assert not verdict.passed
    failed = {row.name for row in verdict.relative if not row.passed}
    assert failed == {"ttft", "e2e"}  # the inter-token gaps did not change
    assert verdict.reasons[0].startswith("ttft slower than the champion by more than 10%")
    # The ceilings alone would have passed it: the comparison decided.
    assert all(row.passed for row in verdict.rows)


def test_a_tail_a_fraction_of_a_millisecond_apart_is_noise_not_a_slowdown() -> None:
    """The calibration's false reject, rebuilt: the champion's own model beside it, its
    slowest tenth of per-token means 0.4 ms slower (x1.3 at p95), everything else alike.
    The floor keeps it a pass; with no floor the p95 bound rejects it."""
    from pipeline.gates.latency import compare_measure

    lat = DEFINITION.latency
    kw = {"max_slowdown": lat.max_slowdown_vs_champion, "significance": lat.significance}
    rng = random.Random(7)
    champion = [0.0012 * math.exp(rng.gauss(0, 0.08)) for _ in range(200)]
    candidate = sorted(0.0012 * math.exp(rng.gauss(0, 0.08)) for _ in range(200))
    candidate = [*candidate[:180], *(v + 0.0004 for v in candidate[180:])]
    floored = compare_measure("itl", candidate, champion, **kw, floor_ms=lat.slowdown_floor_ms.itl)
    assert floored.passed and floored.ratio_p95 > 1.2
    bare = compare_measure("itl", candidate, champion, **kw)
    assert not bare.passed and bare.p95_ratio_lower is not None and bare.p95_ratio_lower > 1.1


def _blocks(values: list[float], size: int) -> list[list[float]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def test_a_burst_in_one_block_is_the_machine_a_slowdown_in_every_block_is_the_candidate() -> None:
    """Paired blocks: one block of the candidate hit by background work (x3) is not a
    regression; the same samples taken as independent requests would reject it."""
    from pipeline.gates.latency import compare_measure

    lat = DEFINITION.latency
    kw = {"max_slowdown": lat.max_slowdown_vs_champion, "significance": lat.significance}
    champion = [r.e2e_s for r in _run(2).records]
    same = [r.e2e_s for r in _run(3).records]
    burst = [v * 3 if 75 <= i < 100 else v for i, v in enumerate(same)]  # block 3 of 8
    paired = compare_measure("e2e", burst, champion, **kw,
                             blocks=(_blocks(burst, 25), _blocks(champion, 25)))  # fmt: skip
    assert paired.passed, paired
    single = compare_measure("e2e", burst, champion, **kw)
    assert not single.passed and single.p95_ratio_lower is not None
    slower = [v * 1.5 for v in same]  # every block
    regressed = compare_measure("e2e", slower, champion, **kw,
                                blocks=(_blocks(slower, 25), _blocks(champion, 25)))  # fmt: skip
    assert not regressed.passed and regressed.p95_ratio_lower is not None
    assert regressed.p95_ratio_lower > 1.1


def test_paired_results_carry_their_blocks() -> None:
    from pipeline.gates.latency import measure_blocks

    merged = paired.merge([_run(1, n=5), _run(2, n=5), _run(3, n=5)])
    assert [r.block for r in merged.records] == [0] * 5 + [1] * 5 + [2] * 5
    assert [len(block) for block in measure_blocks(merged)["e2e"]] == [5, 5, 5]


def test_a_slow_machine_slows_both_and_only_the_ceiling_catches_the_extreme() -> None:
    """Both sides slowed alike pass the comparison; paired, the time ceilings get headroom,
    and beyond it they still fail (a gate that cannot fail is a defect)."""
    lat = DEFINITION.latency
    past_limit = lat.max_ttft_p99_ms / 1000 * 1.2  # over the plain limit, under the ceiling
    verdict = latency_verdict(DEFINITION, _run(1, extra_s=past_limit), _run(2, extra_s=past_limit))
    assert verdict.passed, verdict.reasons
    alone = latency_verdict(DEFINITION, _run(1, extra_s=past_limit))
    assert not alone.passed and alone.reasons[0].startswith("ttft_p99_ms")
    beyond = lat.max_ttft_p99_ms / 1000 * lat.ceiling_headroom_vs_champion * 1.1
    extreme = latency_verdict(DEFINITION, _run(1, extra_s=beyond), _run(2, extra_s=beyond))
    assert all(row.passed for row in extreme.relative)
    assert not extreme.passed and extreme.reasons[0].startswith("ttft_p99_ms")


def test_without_a_champion_the_absolute_limits_decide_alone() -> None:
    verdict = latency_verdict(DEFINITION, _run(1))
    assert verdict.passed and verdict.relative == () and verdict.basis == NO_CHAMPION
    failed = RequestRecord(0, False, 0.0, 0.1, error_kind="http_500")
    broken = LoadResult("http://s", "concurrency", 4, None, 0, 9, 1.0, (failed,))
    fallback = latency_verdict(DEFINITION, _run(1), broken)
    assert fallback.passed and fallback.basis.startswith(NO_CHAMPION)
    assert "champion answered no request" in fallback.basis


def test_itl_is_judged_per_request_not_per_gap() -> None:
    samples = measure_samples(_run(1, n=10))
    assert len(samples["itl"]) == 10 and len(samples["ttft"]) == 10


def test_block_sizes_split_evenly() -> None:
    assert paired.block_sizes(200, 8) == [25] * 8
    assert paired.block_sizes(10, 4) == [3, 3, 2, 2]
    assert paired.block_sizes(3, 8) == [1, 1, 1]


def test_blocks_alternate_abba_and_merge_per_side(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    async def fake_load(url: str, *, requests: int, warmup: int, **_: Any) -> LoadResult:
        calls.append((url, requests, warmup))
        records = tuple(
            RequestRecord(i, True, i * 0.1, 0.1, 0.05, (0.01,), 2, 200) for i in range(requests)
        )
        return LoadResult(url, "concurrency", 1, None, warmup, 2, requests * 0.1, records)

    monkeypatch.setattr(paired, "run_load", fake_load)
    result = paired.run_paired(
        "http://cand", "http://champ", requests=8, blocks=4, warmup=3, max_new_tokens=2
    )
    order = [url.removeprefix("http://") for url, _, _ in calls]
    assert order == ["cand", "champ", "champ", "cand", "champ", "cand", "cand", "champ"]
    assert [w for _, _, w in calls] == [3, 3, 0, 0, 0, 0, 0, 0]  # warm-up once per side
    assert result.blocks == 4
    assert result.candidate.requests == 8 and result.champion.url == "http://champ"
    assert [r.index for r in result.candidate.records] == list(range(8))
    starts = [r.start_s for r in result.candidate.records]
    assert starts == sorted(starts) and result.candidate.duration_s == pytest.approx(0.8)


def test_the_champion_is_the_model_its_quality_results_name(tmp_path: Path) -> None:
    from pipeline.gates.cli import champion_model_from_results

    results = tmp_path / "champion-quality.json"
    results.write_text('{"model": "gpt2", "cases": []}')
    assert champion_model_from_results(results) == "gpt2"
    results.write_text('{"cases": []}')
    with pytest.raises(ValueError, match="names no model"):
        champion_model_from_results(results)
    with pytest.raises(ValueError, match="not a readable"):
        champion_model_from_results(tmp_path / "missing.json")


def test_the_p95_ratio_is_judged_only_with_enough_tail() -> None:
    from pipeline.gates.latency import MIN_TAIL_SAMPLES, compare_measure

    champion = sorted(r.ttft_s for r in _run(2, n=MIN_TAIL_SAMPLES).records if r.ttft_s)
    same = sorted(r.ttft_s for r in _run(3, n=MIN_TAIL_SAMPLES).records if r.ttft_s)
    cut = int(MIN_TAIL_SAMPLES * 0.8)
    tail = [*same[:cut], *(v * 3 for v in same[cut:])]  # only the slowest 20 % regress
    lat = DEFINITION.latency
    kw = {"max_slowdown": lat.max_slowdown_vs_champion, "significance": lat.significance}
    row = compare_measure("ttft", tail, champion, **kw)
    assert row.p95_ratio_lower is not None and row.p95_ratio_lower > 1.5 and not row.passed
    few = compare_measure("ttft", tail[::7], champion[::7], **kw)  # 15 a side
    assert few.p95_ratio_lower is None

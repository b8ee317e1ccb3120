"""The latency gate: judge the candidate against its champion, with absolute ceilings.

The measurements come from :mod:`pipeline.load.generator` against a real server's
HTTP path, the one a user hits, never a bare ``generate`` call. This module only
judges; whoever runs the gate starts the server (``mlcicd gate latency`` does it
through :mod:`pipeline.serving` unless ``--url`` names one that already runs).

Thresholds: p99 time to first token, mean end-to-end latency, error rate. A run
with no successful request fails (there is nothing to measure), and errors above
the allowed rate fail whatever the latencies say. Each threshold is shown beside
its measured value so a failure explains itself.

Paired with the champion: when the registry has one, it is served beside the
candidate on the same machine and the same load alternates between the two
(:mod:`pipeline.load.paired`), so background work slows both alike. Each measure
(TTFT, the mean inter-token latency of each request, end-to-end) is then judged
by two one-sided tests against the champion with the definition's practical
margin (:mod:`pipeline.gates.stats`): Mann-Whitney U on the whole distribution
and a bootstrap bound on the p95 ratio that resamples whole paired blocks (a burst
of background work slows a block, not scattered requests). Per-request ITL means, not every gap,
because the gaps of one request are not independent. A per-measure floor (ms) is
added to both sides first, so that a tail a fraction of a millisecond apart, which
is scheduling noise between two processes, is not read as a 27 % slowdown. The absolute thresholds
stay as ceilings; with no champion they decide alone and the verdict says so.

Left out: throughput floors (the benchmark reports them; as a gate they would be
too machine-dependent to hold on shared CI runners).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.gates.stats import (
    bootstrap_ratio_lower,
    paired_block_ratio_lower,
    slower_beyond_margin,
)
from pipeline.load.generator import LoadResult, RequestRecord
from pipeline.load.stats import percentile

NO_CHAMPION = "absolute limits only: no champion to compare with"
# The p95 ratio is judged only when each side has this many requests (five or more
# beyond the p95): below it the bootstrap bound is the ratio of two maxima, and the
# busy-machine calibration (docs/gates.md) saw it reject a good release (16 requests,
# bound x1.23, Mann-Whitney p=0.09). The Mann-Whitney test judges every sample size.
MIN_TAIL_SAMPLES = 100
# The p95 bound resamples whole paired blocks when there are at least this many
# (pipeline.gates.stats.paired_block_ratio_lower); with fewer, single requests.
MIN_PAIRED_BLOCKS = 4


@dataclass(frozen=True)
class ThresholdRow:
    name: str
    measured: float | None
    threshold: float
    unit: str
    passed: bool


@dataclass(frozen=True)
class RelativeRow:
    """One measure, candidate beside champion; times in ms."""

    name: str
    candidate_p50_ms: float
    champion_p50_ms: float
    candidate_p95_ms: float
    champion_p95_ms: float
    p_value: float  # Mann-Whitney U: candidate slower than champion x (1 + margin)
    p95_ratio_lower: float | None  # bootstrap lower bound of the p95 ratio; None: too few
    passed: bool
    floor_ms: float = 0.0  # added to both sides before the tests

    @property
    def ratio_p50(self) -> float:
        return self.candidate_p50_ms / self.champion_p50_ms if self.champion_p50_ms else 0.0

    @property
    def ratio_p95(self) -> float:
        return self.candidate_p95_ms / self.champion_p95_ms if self.champion_p95_ms else 0.0


@dataclass(frozen=True)
class LatencyVerdict:
    passed: bool
    rows: tuple[ThresholdRow, ...]
    reasons: tuple[str, ...]
    relative: tuple[RelativeRow, ...] = ()
    basis: str = NO_CHAMPION


def measure_samples(result: LoadResult) -> dict[str, list[float]]:
    """Per-request samples (seconds) of each measure the paired comparison judges."""
    return _samples(result.ok_records)


def measure_blocks(result: LoadResult) -> dict[str, list[list[float]]]:
    """:func:`measure_samples` per block of a paired measurement, in block order."""
    ok = result.ok_records
    blocks = sorted({r.block for r in ok})
    per_block = [_samples([r for r in ok if r.block == block]) for block in blocks]
    return {name: [samples[name] for samples in per_block] for name in _samples(())}


def _samples(ok: Sequence[RequestRecord]) -> dict[str, list[float]]:
    return {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "itl": [sum(r.itl_s) / len(r.itl_s) for r in ok if r.itl_s],
        "e2e": [r.e2e_s for r in ok],
    }


def compare_measure(
    name: str,
    candidate: Sequence[float],
    champion: Sequence[float],
    *,
    max_slowdown: float,
    significance: float,
    floor_ms: float = 0.0,
    blocks: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]] | None = None,
) -> RelativeRow:
    """Candidate vs champion on one measure: fails only on evidence beyond the margin,
    both sides raised by ``floor_ms`` first. ``blocks``: the same samples as paired
    blocks (candidate's, champion's), for the p95 bound."""
    floor_s = floor_ms / 1000
    floored = [v + floor_s for v in candidate]
    reference = [v + floor_s for v in champion]
    test = slower_beyond_margin(floored, reference, max_slowdown)
    lower = None
    if min(len(candidate), len(champion)) >= MIN_TAIL_SAMPLES:
        if blocks and len(blocks[0]) == len(blocks[1]) >= MIN_PAIRED_BLOCKS:
            lower = paired_block_ratio_lower(
                [[v + floor_s for v in block] for block in blocks[0]],
                [[v + floor_s for v in block] for block in blocks[1]],
                95,
                1 - significance,
            )
        else:
            lower = bootstrap_ratio_lower(floored, reference, 95, 1 - significance)
    return RelativeRow(
        name,
        percentile(candidate, 50) * 1000,
        percentile(champion, 50) * 1000,
        percentile(candidate, 95) * 1000,
        percentile(champion, 95) * 1000,
        test.p,
        lower,
        passed=test.p >= significance and (lower is None or lower <= 1 + max_slowdown),
        floor_ms=floor_ms,
    )


def _bound(lower: float | None) -> str:
    return "n/a, too few requests" if lower is None else f"x{lower:.2f}"


def compare_with_champion(
    result: LoadResult,
    champion: LoadResult,
    *,
    max_slowdown: float,
    significance: float,
    floors_ms: Mapping[str, float],
) -> tuple[tuple[RelativeRow, ...], list[str]]:
    """Rows for every measure both sides have, and a reason per failed one."""
    ours, theirs = measure_samples(result), measure_samples(champion)
    our_blocks, their_blocks = measure_blocks(result), measure_blocks(champion)
    rows: list[RelativeRow] = []
    reasons: list[str] = []
    for name in ours:
        if not ours[name] or not theirs[name]:
            continue
        row = compare_measure(
            name, ours[name], theirs[name], max_slowdown=max_slowdown,
            significance=significance, floor_ms=floors_ms.get(name, 0.0),
            blocks=(our_blocks[name], their_blocks[name]),
        )  # fmt: skip
        rows.append(row)
        if not row.passed:
            reasons.append(
                f"{name} slower than the champion by more than {max_slowdown:.0%}: "
                f"p50 {row.candidate_p50_ms:.1f} vs {row.champion_p50_ms:.1f} ms "
                f"(x{row.ratio_p50:.2f}), p95 {row.candidate_p95_ms:.1f} vs "
                f"{row.champion_p95_ms:.1f} ms (x{row.ratio_p95:.2f}, lower bound "
                f"{_bound(row.p95_ratio_lower)} with a {row.floor_ms:g} ms floor), "
                f"Mann-Whitney p={row.p_value:.2g} (< {significance} fails)"
            )
    return tuple(rows), reasons


def judge_latency(
    result: LoadResult,
    *,
    max_ttft_p99_ms: float,
    max_e2e_mean_ms: float,
    max_error_rate: float,
    champion: LoadResult | None = None,
    max_slowdown: float = 0.0,
    significance: float = 0.01,
    ceiling_headroom: float = 1.0,
    slowdown_floor_ms: Mapping[str, float] | None = None,
) -> LatencyVerdict:
    """The verdict; paired when ``champion`` answered, else by the absolute limits alone.

    Paired, the time limits are multiplied by ``ceiling_headroom``: the champion
    measured beside the candidate decides, and the ceiling only catches what a
    machine too slow for either would hide. The error rate has no headroom.
    """
    paired = champion is not None and bool(champion.ok_records) and bool(result.ok_records)
    headroom = ceiling_headroom if paired else 1.0
    rows = ceiling_rows(
        result, max_ttft_p99_ms * headroom, max_e2e_mean_ms * headroom, max_error_rate
    )
    reasons: list[str] = []
    if not result.ok_records:
        reasons.append(f"no successful request out of {result.requests}")
    for row in rows:
        if not row.passed and row.measured is not None:
            reasons.append(f"{row.name} {row.measured:.4g} > max {row.threshold:g}")
    if result.error_count and result.error_rate > max_error_rate:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(result.errors.items()))
        reasons.append(f"errors by kind: {kinds}")
    relative: tuple[RelativeRow, ...] = ()
    basis = NO_CHAMPION
    if paired:
        assert champion is not None
        relative, slower = compare_with_champion(
            result, champion, max_slowdown=max_slowdown, significance=significance,
            floors_ms=slowdown_floor_ms or {},
        )  # fmt: skip
        reasons += slower
        basis = (
            f"paired with the champion ({champion.url}), same machine, interleaved load; "
            f"ceilings are the absolute limits x {ceiling_headroom:g}"
        )
    elif champion is not None:
        basis = f"{NO_CHAMPION} (the champion answered no request successfully)"
    return LatencyVerdict(not reasons, rows, tuple(reasons), relative, basis)


def ceiling_rows(
    result: LoadResult, max_ttft_p99_ms: float, max_e2e_mean_ms: float, max_error_rate: float
) -> tuple[ThresholdRow, ...]:
    """Each absolute limit beside its measured value."""
    ttft = result.ttft
    e2e = result.e2e
    measured_ttft = ttft.p99 * 1000 if ttft is not None else None
    measured_e2e = e2e.mean * 1000 if e2e is not None else None
    rows = (
        ThresholdRow(
            "ttft_p99_ms",
            measured_ttft,
            max_ttft_p99_ms,
            "ms",
            measured_ttft is not None and measured_ttft <= max_ttft_p99_ms,
        ),
        ThresholdRow(
            "e2e_mean_ms",
            measured_e2e,
            max_e2e_mean_ms,
            "ms",
            measured_e2e is not None and measured_e2e <= max_e2e_mean_ms,
        ),
        ThresholdRow(
            "error_rate", result.error_rate, max_error_rate, "", result.error_rate <= max_error_rate
        ),
    )
    return rows


def write_histogram(result: LoadResult, verdict: LatencyVerdict, path: Path) -> None:
    """TTFT and end-to-end latency histograms, each with its threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = {row.name: row.threshold for row in verdict.rows}
    series = (
        ("Time to first token", [r.ttft_s * 1000 for r in result.ok_records if r.ttft_s], "ttft"),
        ("End-to-end latency", [r.e2e_s * 1000 for r in result.ok_records], "e2e"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, values, key) in zip(axes, series, strict=True):
        if values:
            ax.hist(values, bins=40, color="#4477aa")
        limit_name = "ttft_p99_ms" if key == "ttft" else "e2e_mean_ms"
        label = "max p99" if key == "ttft" else "max mean"
        ax.axvline(thresholds[limit_name], color="#cc3311", linestyle="--", label=label)
        measured = next(row.measured for row in verdict.rows if row.name == limit_name)
        if measured is not None:
            what = "measured p99" if key == "ttft" else "measured mean"
            ax.axvline(measured, color="#222222", linestyle="-", label=what)
        ax.set_title(f"{title} (n={len(values)})")
        ax.set_xlabel("ms")
        ax.set_ylabel("requests")
        ax.legend()
    verdict_text = "PASS" if verdict.passed else "FAIL"
    fig.suptitle(f"Latency gate: {verdict_text} ({result.requests} requests, {result.url})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""The servers of a local canary rollout, and how traffic is split over them.

Why a baseline: in a cluster, Argo's basic canary sets weights by replica counts,
so every pod, canary or stable, serves the same share of requests, and comparing
the canary's histograms with the stable's compares like with like. On one machine
there is one stable process, which at a 10 % step serves nine times the canary's
load on the same two cores: measured, a build canaried against its own copy was
1.4-1.8x "slower" than that stable at p90, from load alone. So, as Kayenta does,
the local rollout starts a **baseline**: a second process of the champion, given
the same share as the canary, started at the same time. The canary is judged
against the baseline (``--stable baseline``: the same queries the
AnalysisTemplate runs, with another label value); the stable takes the rest and
stands in for production. A first release (no champion) has neither.

The servers share this machine's cores as pods would not: each gets
``cores // (servers + 1)`` torch threads (at least one, ``pipeline.serving.pod_threads``),
as a pod's CPU request would give it.
Measured without the cap, canary and baseline each ran two threads on two cores
beside the stable; at the 50 % step both reached a p99 of 4.8 s (against 1.1 s at
10 %), threads spinning at barriers while their partner was descheduled.

Left out: a baseline above the 50 % step. Canary and baseline get equal shares
up to 50 %; above it the baseline gets what is left (100 - weight), so the shares
differ, and at 100 % the step is not analysed (as in Argo).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.local.services import ScrapeTarget, Service


def address(service: Service) -> str:
    return service.url.removeprefix("http://")


@dataclass(frozen=True)
class Fleet:
    """stable (the champion, or a first release alone), and with a champion: canary and baseline."""

    stable: Service
    canary: Service | None = None
    baseline: Service | None = None

    @property
    def judged(self) -> Service:
        """The release being judged: the canary, or a first release serving alone."""
        return self.canary or self.stable

    @property
    def reference_label(self) -> str | None:
        """The ``version`` label the canary is compared with, if any."""
        if self.canary is None:
            return None
        return "baseline" if self.baseline is not None else "stable"

    def scrape_targets(self) -> list[ScrapeTarget]:
        if self.canary is None:
            return [ScrapeTarget(address(self.stable), {"version": "canary"})]
        targets = [
            ScrapeTarget(address(self.stable), {"version": "stable"}),
            ScrapeTarget(address(self.canary), {"version": "canary"}),
        ]
        if self.baseline is not None:
            targets.append(ScrapeTarget(address(self.baseline), {"version": "baseline"}))
        return targets

    def weights(self, canary_weight: int) -> dict[str, int]:
        """Upstream address -> percent at a step of ``canary_weight`` (0: roll back)."""
        if self.canary is None or canary_weight <= 0:
            return {address(self.stable): 100}
        if canary_weight >= 100:
            return {address(self.canary): 100}
        split = {address(self.canary): canary_weight}
        rest = 100 - canary_weight
        if self.baseline is not None:
            share = min(canary_weight, rest)
            split[address(self.baseline)] = share
            rest -= share
        split[address(self.stable)] = rest
        return split

    def names(self) -> dict[str, str]:
        """Upstream address -> role, for counting what each served."""
        roles = {"stable": self.stable, "canary": self.canary, "baseline": self.baseline}
        return {address(s): role for role, s in roles.items() if s is not None}

"""The HTML release report in a real browser: headless Chromium renders it.

``--dump-dom`` shows the page as the browser parsed it (sections, gate tables,
inline plots); ``--screenshot`` shows it was drawn: a non-trivial PNG in which the
plots' blue and the verdict badges' colours appear, which only happens when the
base64 images decoded and the CSS applied.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pipeline.report.cli import write_report
from tests.fixtures.release_reports import write_sample_reports

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
PLOT_BLUE = (0x44, 0x77, 0xAA)  # pipeline/report/plots.py's bars and lines
FAIL_RED = (0xA4, 0x0E, 0x26)  # the FAIL badge's text


def chromium(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[bytes]:
    found = (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome"))
    binary = next((path for path in found if path), None)
    assert binary, "chromium is installed by scripts/setup.sh (APT_PACKAGES)"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=timeout_s,
            check=True,
        )


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return write_report(write_sample_reports(root / "reports"), root / "out").html


def test_the_browser_parses_the_gate_tables_and_the_plots(page: Path) -> None:
    dom = chromium("--dump-dom", page.as_uri()).stdout.decode()
    parser = _Elements()
    parser.feed(dom)
    sections = {a.get("id"): a.get("class") for t, a in parser.tags if t == "section"}
    assert sections == {
        "release": "verdict-none",
        "quality-gate": "verdict-pass",
        "latency-gate": "verdict-pass",
        "canary": "verdict-fail",
        "artifacts": "verdict-none",
    }
    assert sum(1 for t, a in parser.tags if t == "table" and a.get("class") == "gate") == 5
    plots = [a for t, a in parser.tags if t == "img"]
    assert [a.get("id") for a in plots] == ["plot-latency-gate", "plot-canary"]
    assert all((a.get("src") or "").startswith("data:image/png;base64,iVBOR") for a in plots)
    assert "40/41 = 97.6%" in dom and "paired difference" in dom


def test_the_browser_draws_the_page(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,2600", f"--screenshot={shot}", page.as_uri())
    assert shot.stat().st_size > 50_000
    with Image.open(shot) as image:
        assert image.size == (1200, 2600)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20) or []
    counts = {rgb: n for n, rgb in colours}
    assert len(counts) > 200  # text, tables and plots, not a blank page
    assert counts.get(PLOT_BLUE, 0) > 1_000  # the inline plots were decoded and drawn (0 if not)
    assert counts.get(FAIL_RED, 0) > 20  # the FAIL badge's CSS applied

"""The report's two formats: GitHub-flavoured Markdown and one self-contained HTML page.

Markdown goes to ``$GITHUB_STEP_SUMMARY``, the sticky PR comment and ``report.md``;
its plots are images beside it (local) or links to the run's artifacts (CI, where a
summary cannot show an artifact's image). The HTML page inlines its plots as base64
``data:`` URIs, so it can be mailed or opened from anywhere.

Left out: JavaScript, external CSS or fonts (the page must render offline).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pipeline.report.sections import FAIL, PASS, Section, Table

_BADGE = {PASS: "✅ PASS", FAIL: "❌ FAIL"}
_CODE = re.compile(r"`([^`]+)`")


def _badge(verdict: str) -> str:
    return _BADGE.get(verdict, f"⏭️ {verdict}")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |"]
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return [*lines, ""]


def markdown(
    title: str, verdict: str, sections: list[Section], artifacts_url: str | None = None
) -> str:
    """The report as GFM; with ``artifacts_url`` plots are links there, else inline images."""
    out = [f"# {title}: {_badge(verdict)}", ""]
    for section in sections:
        heading = section.title + (f" — {_badge(section.verdict)}" if section.verdict else "")
        out += [f"## {heading}", ""]
        out += [*(f"{note}  " for note in section.notes), ""] if section.notes else []
        for table in section.tables:
            out += _md_table(table)
        if section.image:
            if artifacts_url:
                out += [f"Plot: [{section.image}]({artifacts_url}) (run artifacts)", ""]
            else:
                out += [f"![{section.title}]({section.image})", ""]
        out += [f"- [{link.label}]({link.href})" for link in section.links]
        if section.links:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1f2328; padding: 0 1em; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
th { background: #f6f8fa; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; font-size: 90%; }
.badge { font-size: 80%; padding: 2px 8px; border-radius: 10px; vertical-align: middle; }
.verdict-pass .badge, h1 .verdict-pass { background: #dafbe1; color: #116329; }
.verdict-fail .badge, h1 .verdict-fail { background: #ffebe9; color: #a40e26; }
.verdict-none .badge { background: #eaeef2; color: #57606a; }
img.plot { max-width: 100%; border: 1px solid #d0d7de; }
"""


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _verdict_class(verdict: str | None) -> str:
    return {PASS: "verdict-pass", FAIL: "verdict-fail"}.get(verdict or "", "verdict-none")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f'<table class="gate"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_page(title: str, verdict: str, sections: list[Section], image_dir: Path) -> str:
    """One page with every plot inlined from ``image_dir``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1 id="report-title">{html.escape(title)} '
        f'<span class="badge {_verdict_class(verdict)}">{html.escape(verdict)}</span></h1>',
    ]
    for section in sections:
        badge = (
            f' <span class="badge">{html.escape(section.verdict)}</span>' if section.verdict else ""
        )
        parts.append(
            f'<section id="{_slug(section.title)}" class="{_verdict_class(section.verdict)}">'
            f"<h2>{html.escape(section.title)}{badge}</h2>"
        )
        parts += [f"<p>{_inline(note)}</p>" for note in section.notes]
        parts += [_html_table(table) for table in section.tables]
        if section.image and (image_dir / section.image).is_file():
            parts.append(
                f'<img class="plot" id="plot-{_slug(section.title)}" '
                f'alt="{html.escape(section.title)} plot" '
                f'src="{_data_uri(image_dir / section.image)}">'
            )
        if section.links:
            items = "".join(
                f'<li><a href="{html.escape(link.href)}">{html.escape(link.label)}</a></li>'
                for link in section.links
            )
            parts.append(f"<ul>{items}</ul>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

"""`mlcicd infra diff`: per-resource, per-key differences between two renders.

The main case is the one a reviewer meets: one threshold changed in pipeline.toml.
A copy of the code with that change is rendered by the real CLI, in its own
interpreter, exactly as the pull-request job renders the PR's base and head.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.mock_runtime import record
from infra.render import MASK, write_render
from infra.render_diff import COMMENT_LIMIT, compare, diff_renders, flatten, markdown_report

from .conftest import MARKERS, REPO, copy_code


def _mlcicd(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlcicd", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_flatten_addresses_named_list_items_by_name() -> None:
    data = {"spec": {"metrics": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "args": [3, 4]}}
    assert flatten(data) == {
        "spec.args[0]": 3,
        "spec.args[1]": 4,
        "spec.metrics[a].name": "a",
        "spec.metrics[a].x": 1,
        "spec.metrics[b].name": "b",
        "spec.metrics[b].x": 2,
    }


@pytest.mark.slow
def test_two_renders_of_the_same_code_are_identical(
    renders: dict[str, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again"
    write_render(record("staging", secrets=MARKERS), again)
    assert diff_renders(renders["staging"], again) == ([], False)
    for path in sorted(p for p in again.rglob("*") if p.is_file()):
        relative = path.relative_to(again)
        assert path.read_bytes() == (renders["staging"] / relative).read_bytes(), relative
    done = _mlcicd("infra", "diff", str(renders["staging"]), str(again))
    assert (done.returncode, done.stdout) == (0, "no differences\n")


@pytest.fixture(scope="module")
def threshold_change(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The diff output for ``[canary] min_success_rate`` 0.99 -> 0.98 (prod stack)."""
    code = copy_code(tmp_path_factory.mktemp("changed-code"), min_success_rate="0.98")
    base, head = tmp_path_factory.mktemp("base"), tmp_path_factory.mktemp("head")
    # As the pull-request job renders: one image tag for both commits.
    for root, out in ((REPO, base), (code, head)):
        done = _mlcicd(
            "infra", "render", "--stack", "prod", "--image-tag", "review", "--out", str(out),
            cwd=root,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    diff = _mlcicd("infra", "diff", str(base), str(head))
    assert diff.returncode == 1, diff.stderr
    return diff.stdout


def test_one_threshold_change_shows_the_lines_that_moved(threshold_change: str) -> None:
    lines = threshold_change.splitlines()
    analysis = (
        "~ AnalysisTemplate/inference-analysis-template  (2 changed, 0 added, 0 removed keys;"
    )
    assert any(line.startswith(analysis) for line in lines), threshold_change
    condition = "spec.metrics[success-rate].successCondition: "
    assert f"-   {condition}len(result) > 0 && !isNaN(result[0]) && result[0] >= 0.99" in lines
    assert f"+   {condition}len(result) > 0 && !isNaN(result[0]) && result[0] >= 0.98" in lines
    alert = "spec.groups[mlcicd-canary-alerts].rules[0].expr: (mlcicd:canary:success_rate < "
    assert any(line.startswith(f"+   {alert}0.98)") for line in lines)
    assert any(line.startswith("~ PrometheusRule/inference-server-rules") for line in lines)
    # Nothing else moved: the Rollout, its image and the other metrics are untouched.
    headers = [line.split("  (")[0] for line in lines if re.match(r"[~+-] \S", line)]
    assert headers == [
        "~ AnalysisTemplate/inference-analysis-template",
        "~ PrometheusRule/inference-server-rules",
        "~ WorkflowJob/ml-cicd/deploy-production",
    ]
    assert lines[-1] == "3 resources differ: 3 changed, 0 added, 0 removed"


def test_diff_never_prints_a_secret(renders: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, value in ((a, "old-token-123"), (b, "new-token-456")):
        (root / "kubernetes").mkdir(parents=True)
        secret = {"apiVersion": "v1", "kind": "Secret", "stringData": {"token": value}}
        (root / "kubernetes" / "Secret-token.yaml").write_text(yaml.safe_dump(secret))
    (b / "kubernetes" / "Secret-token.yaml").write_text(
        yaml.safe_dump({"kind": "Secret", "stringData": {"token": "x", "added": "y"}})
    )
    lines, different = diff_renders(a, b)
    text = "\n".join(lines)
    assert different and "stringData.added" in text
    assert "token-" not in text and MASK in text
    everything = diff_renders(renders["staging"], renders["prod"])[0]
    assert not any(marker in line for line in everything for marker in MARKERS.values())


def test_added_removed_and_changed_keys(renders: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(renders["staging"], copy)
    outputs = yaml.safe_load((copy / "outputs.yaml").read_text())
    outputs["newOutput"] = "hello"
    del outputs["registry"]
    outputs["endpoint"] = "http://elsewhere"
    (copy / "outputs.yaml").write_text(yaml.safe_dump(outputs))
    (copy / "kubernetes" / "Namespace-monitoring.yaml").unlink()
    (copy / "kubernetes" / "ConfigMap-extra.yaml").write_text(
        yaml.safe_dump({"kind": "ConfigMap", "data": {"a": "1"}})
    )
    changes = {c.label: c for c in compare(renders["staging"], copy)}
    assert set(changes) == {"StackOutputs/outputs", "Namespace/monitoring", "ConfigMap/extra"}
    outputs_change = changes["StackOutputs/outputs"]
    assert outputs_change.added == {"newOutput": "hello"}
    assert set(outputs_change.removed) == {"registry"}
    assert outputs_change.changed["endpoint"][1] == "http://elsewhere"
    assert changes["Namespace/monitoring"].status == "removed"
    assert changes["ConfigMap/extra"].status == "added"
    lines = diff_renders(renders["staging"], copy)[0]
    assert "+   newOutput: hello" in lines and "+   data.a: 1" in lines
    assert lines[-1] == "3 resources differ: 1 changed, 1 added, 1 removed"
    markdown = markdown_report(lines, "Infra: staging")
    assert markdown.startswith("### Infra: staging\n\n3 resources differ")
    assert "```diff\n~ StackOutputs/outputs" in markdown or "```diff\n+ ConfigMap" in markdown


@pytest.mark.slow
def test_cli_exit_codes_and_a_closed_pipe(renders: dict[str, Path], tmp_path: Path) -> None:
    missing = _mlcicd("infra", "diff", str(tmp_path / "nope"), str(renders["prod"]))
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    piped = subprocess.run(
        f"{sys.executable} -m mlcicd infra diff {renders['staging']} {renders['prod']} | head -1",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0 and piped.stdout.startswith(("~ ", "+ ", "- "))
    assert piped.stderr == "", piped.stderr


def test_a_changed_multi_line_value_shows_only_the_lines_that_moved(tmp_path: Path) -> None:
    script = "set -e\nstep one\nstep two\nstep three\n"
    for root, text in ((tmp_path / "a", script), (tmp_path / "b", script.replace("two", "2"))):
        (root / "kubernetes").mkdir(parents=True)
        data = {"kind": "ConfigMap", "data": {"run.sh": text}}
        (root / "kubernetes" / "ConfigMap-scripts.yaml").write_text(yaml.safe_dump(data))
    lines, _ = diff_renders(tmp_path / "a", tmp_path / "b")
    assert lines == [
        "~ ConfigMap/scripts  (1 changed, 0 added, 0 removed keys; "
        "kubernetes/ConfigMap-scripts.yaml)",
        "~   data.run.sh:",
        "        step one",
        "-       step two",
        "+       step 2",
        "        step three",
        "1 resources differ: 1 changed, 0 added, 0 removed",
    ]


def test_the_markdown_fits_a_pull_request_comment() -> None:
    lines = [f"+   key{i}: " + "x" * 500 for i in range(200)] + ["200 resources differ"]
    markdown = markdown_report(lines, "Infra")
    assert len(markdown) < COMMENT_LIMIT + 500
    assert markdown.rstrip().endswith("more lines in the job log)")
    assert markdown.count("```") == 2  # the diff block is closed before the note

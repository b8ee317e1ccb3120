"""The local pipeline's real services: nginx splits traffic by weight; buildah builds an
image that a real registry serves back by digest."""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.local.image_bundle import ImageError, PushedImage, build_and_push, pull_and_unpack
from pipeline.local.services import TrafficSplitter, start_registry


class _Named(http.server.BaseHTTPRequestHandler):
    name = "?"

    def do_GET(self) -> None:
        body = self.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _server(name: str) -> http.server.ThreadingHTTPServer:
    handler = type(f"H{name}", (_Named,), {"name": name})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def backends() -> Iterator[tuple[str, str]]:
    stable, canary = _server("stable"), _server("canary")
    yield (f"127.0.0.1:{stable.server_port}", f"127.0.0.1:{canary.server_port}")
    stable.shutdown()
    canary.shutdown()


def _hits(url: str, n: int) -> Counter[str]:
    with httpx.Client() as client:
        return Counter(client.get(f"{url}/health").text for _ in range(n))


@pytest.mark.slow
def test_nginx_splits_by_weight_and_reloads(tmp_path: Path, backends: tuple[str, str]) -> None:
    stable, canary = backends
    splitter = TrafficSplitter(tmp_path / "nginx", tmp_path / "logs", stable)
    try:
        assert _hits(splitter.url, 20) == Counter({"stable": 20})
        since = time.time()
        splitter.set_weights({stable: 70, canary: 30})
        hits = _hits(splitter.url, 100)
        # nginx's smooth weighted round robin is exact over a full cycle of 100.
        assert hits == Counter({"stable": 70, "canary": 30})
        time.sleep(0.2)  # nginx writes its access log line after the response
        assert splitter.served_since(since) == Counter({stable: 70, canary: 30})
        splitter.set_weights({canary: 100})
        assert _hits(splitter.url, 20) == Counter({"canary": 20})
        splitter.set_weights({stable: 100})
        assert _hits(splitter.url, 20) == Counter({"stable": 20})
    finally:
        assert splitter.stop() == 0


@pytest.mark.slow
def test_bundle_image_round_trips_through_a_real_registry(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00\x01weights")
    source = tmp_path / "src"
    for item in ("inference", "pipeline"):
        (source / item).mkdir(parents=True)
        (source / item / "__init__.py").write_text(f"# {item}\n")
        (source / item / "__pycache__").mkdir()
        (source / item / "__pycache__" / "x.pyc").write_bytes(b"cache")
    for item in ("pipeline.toml", "pyproject.toml", "requirements.lock"):
        (source / item).write_text(f"# {item}\n")
    registry = start_registry(tmp_path / "registry", tmp_path / "logs")
    try:
        host = registry.url.removeprefix("http://")
        image = build_and_push(
            model_dir=model,
            source_root=source,
            registry_host=host,
            repository="mlcicd/test-bundle",
            tag="abc",
            labels={"io.mlcicd.model.hash": "h1"},
            storage=tmp_path / "storage",
            workdir=tmp_path / "build",
        )
        assert (
            image.digest.startswith("sha256:")
            and image.reference == f"{host}/mlcicd/test-bundle:abc"
        )
        labels = pull_and_unpack(image, tmp_path / "deploy", tmp_path / "pull")
        assert labels["io.mlcicd.model.hash"] == "h1"
        assert (tmp_path / "deploy" / "model" / "weights.bin").read_bytes() == b"\x00\x01weights"
        # The server alone: inference/ and its pins, not the pipeline.
        app = tmp_path / "deploy" / "app"
        assert sorted(path.name for path in app.iterdir()) == ["inference", "requirements.lock"]
        assert not list((tmp_path / "deploy" / "app").rglob("__pycache__"))
        wrong = PushedImage(image.reference, "sha256:" + "0" * 64)
        with pytest.raises(ImageError):
            pull_and_unpack(wrong, tmp_path / "deploy2", tmp_path / "pull2")
    finally:
        registry.stop()


@pytest.mark.slow
def test_the_same_commit_and_model_build_the_same_digest(tmp_path: Path) -> None:
    """Reproducible bundle: two builds, in two build directories, with the files'
    mtimes and modes changed in between, push the very same digest."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"weights")
    source = tmp_path / "src"
    (source / "inference").mkdir(parents=True)
    (source / "inference" / "__init__.py").write_text("# inference\n")
    (source / "requirements.lock").write_text("# lock\n")
    registry = start_registry(tmp_path / "registry", tmp_path / "logs")
    try:
        host = registry.url.removeprefix("http://")

        def build(run: str, tag: str) -> PushedImage:
            return build_and_push(
                model_dir=model, source_root=source, registry_host=host,
                repository="mlcicd/repro", tag=tag, labels={"io.mlcicd.model.hash": "h1"},
                storage=tmp_path / "storage", workdir=tmp_path / run / "build",
                timestamp=1_700_000_000,
            )  # fmt: skip

        first = build("run-1", "abc")
        time.sleep(1.1)
        for path in (model / "weights.bin", source / "inference" / "__init__.py"):
            path.touch()
            path.chmod(0o600)
        second = build("run-2", "abc")
        assert second.digest == first.digest
        changed = tmp_path / "model" / "weights.bin"
        changed.write_bytes(b"other weights")
        assert build("run-3", "abc").digest != first.digest
    finally:
        registry.stop()

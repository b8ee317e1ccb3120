"""Build, push and unpack the release image of the local pipeline, daemonless.

Why not the root ``Dockerfile``: it starts from a CUDA base image, and this
machine can reach no image registry on the internet, so no base image can be
pulled here. The local pipeline therefore builds a *bundle* image ``FROM
scratch`` with buildah: the model weights under ``/model`` and the server's
source under ``/app``, labelled with the git sha and the model's content hash.
It is pushed to a real OCI registry (``docker-registry``), and the staging and
production "deploys" pull it back by digest with skopeo and unpack its layers,
so what serves is exactly what the registry holds. There is no container
engine here either, so the unpacked bundle runs on the host's Python; in a
cluster the root ``Dockerfile`` image runs instead (built by the workflow).

Reproducible: the same commit and model give the same digest, so re-releasing a
commit re-addresses the image the registry already holds instead of minting a
new one. What could vary between two builds is pinned: every file's time and
the image's creation time are ``timestamp`` (the commit's time; buildah
``commit --timestamp``); files are owned by 0:0 (``copy --chown``) with their
modes normalised; the build context is a fresh copy without caches; labels are
sorted and say what was built (commit, model hash), never which run built it;
and the build history, which records the builder's paths, is omitted.

Left out: image signing, SBOMs, multi-arch manifests.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from inference.serve_cli import IMAGE_COMMAND

# The serving image holds the server alone: inference/ imports nothing from the pipeline.
SOURCE_ITEMS = ("inference", "requirements.lock")


class ImageError(RuntimeError):
    """buildah or skopeo failed; the message carries the command and its output."""


@dataclass(frozen=True)
class PushedImage:
    reference: str  # host:port/repo:tag
    digest: str  # sha256:...

    @property
    def pinned(self) -> str:
        repo = self.reference.rsplit(":", 1)[0]
        return f"{repo}@{self.digest}"


def _storage_args(storage: Path) -> list[str]:
    return [
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "vfs",
    ]


def _run(argv: list[str]) -> str:
    env = dict(os.environ, BUILDAH_ISOLATION="chroot")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed (apt-get install buildah skopeo)") from exc
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv[:3])} ... failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


def build_and_push(
    *,
    model_dir: Path,
    source_root: Path,
    registry_host: str,
    repository: str,
    tag: str,
    labels: dict[str, str],
    storage: Path,
    workdir: Path,
    timestamp: int = 0,
) -> PushedImage:
    """Build the bundle image and push it; returns the registry's digest.

    ``timestamp`` (seconds since the epoch) is every file's and the image's time.
    """
    storage.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    base = ["buildah", *_storage_args(storage)]
    container = _run([*base, "from", "scratch"])
    try:
        model = _stage_copy(model_dir, workdir / "model")
        for src, dest in ((model, "/model"), (_stage_source(source_root, workdir), "/app")):
            _run([*base, "copy", "--chown", "0:0", container, str(src), dest])
        config = [
            *base,
            "config",
            "--workingdir",
            "/app",
            "--entrypoint",
            json.dumps([*IMAGE_COMMAND, "--model", "/model"]),
        ]
        for key, value in sorted(labels.items()):
            config += ["--label", f"{key}={value}"]
        _run([*config, container])
        local = f"localhost/{repository}:{tag}"
        _run([*base, "commit", "--rm", "--omit-history", "--identity-label=false",
              "--timestamp", str(timestamp), container, local])  # fmt: skip
    except ImageError:
        subprocess.run([*base, "rm", container], capture_output=True, check=False)
        raise
    reference = f"{registry_host}/{repository}:{tag}"
    digest_file = workdir / "digest"
    _run(
        [
            *base,
            "push",
            "--tls-verify=false",
            "--digestfile",
            str(digest_file),
            local,
            f"docker://{reference}",
        ]
    )
    return PushedImage(reference=reference, digest=digest_file.read_text().strip())


def _stage_source(source_root: Path, workdir: Path) -> Path:
    """Copy the server's source, without caches, into a clean build context."""
    context = workdir / "app"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in SOURCE_ITEMS:
        path = source_root / item
        if path.is_dir():
            shutil.copytree(path, context / item, ignore=ignore)
        else:
            shutil.copy2(path, context / item)
    _normalise_modes(context)
    return context


def _stage_copy(source: Path, dest: Path) -> Path:
    """A copy of ``source`` with normalised modes (hidden files, such as locks, left out)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".*"))
    _normalise_modes(dest)
    return dest


def _normalise_modes(root: Path) -> None:
    """0755 for directories and executables, 0644 for other files: the umask must not
    change the digest."""
    for path in sorted(root.rglob("*")):
        if path.is_dir() or path.stat().st_mode & 0o100:
            path.chmod(0o755)
        else:
            path.chmod(0o644)
    root.chmod(0o755)


def pull_and_unpack(image: PushedImage, dest: Path, workdir: Path) -> dict[str, str]:
    """Pull ``image`` by digest into an OCI layout, unpack its layers into ``dest``.

    Returns the image's labels. Fails if the registry serves another digest.
    """
    layout = workdir / "oci"
    shutil.rmtree(layout, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"docker://{image.pinned}",
            f"oci:{layout}:release",
        ]
    )
    index = json.loads((layout / "index.json").read_text())
    manifest_digest: str = index["manifests"][0]["digest"]
    if manifest_digest != image.digest:
        raise ImageError(f"registry served {manifest_digest}, expected {image.digest}")
    manifest = json.loads(_blob(layout, manifest_digest).decode())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).decode())
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for layer in manifest["layers"]:
        data = _blob(layout, layer["digest"])
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(dest, filter="data")
    labels: dict[str, str] = config.get("config", {}).get("Labels") or {}
    return labels


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, value = digest.split(":", 1)
    return (layout / "blobs" / algorithm / value).read_bytes()

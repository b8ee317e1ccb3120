#!/usr/bin/env bash
# Installs everything mlcicd needs on a fresh Debian machine with Python 3.11:
# the Debian services the tests and the local pipeline run for real, and a
# virtualenv with pinned Python dependencies. Idempotent: a second run with
# nothing changed takes a second. Sourced or run by scripts/main.sh and
# scripts/test.sh; prints what it does, since a first install takes minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# chromium: the release report test renders report.html in a real headless browser.
# libjemalloc2: the server's allocator where installed (inference/allocator.py).
APT_PACKAGES=(prometheus docker-registry buildah skopeo nginx shellcheck libjemalloc2 chromium)
has_browser() {
  local name
  for name in chromium chromium-browser google-chrome; do
    command -v "$name" >/dev/null && return 0
  done
  return 1
}
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  # GitHub's Ubuntu runners ship Chrome already (and Ubuntu's chromium package is a snap).
  if [ "$pkg" = chromium ] && has_browser; then
    continue
  fi
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

# pip's output without the noise of index locations this machine's pip config names
# but does not have; pip's own exit status is kept (pipefail).
pip_install() {
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

stamp="$(cat requirements.lock requirements-peer.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat .venv/.mlcicd-installed 2>/dev/null || true)" != "$stamp" ]; then
  echo "setup: installing Python dependencies (torch 2.13.0 CPU first, then requirements.lock)"
  pip_install --upgrade pip
  # torch first and pinned: an unpinned torch, pulled in by transformers, is a multi-GB CUDA build.
  pip_install torch==2.13.0
  pip_install -r requirements.lock
  # The optional `peer` extra (CTranslate2 for `mlcicd bench`), so its tests run too.
  pip_install -r requirements-peer.lock
  # (the editable build warns about package-named folders, which is the point of it)
  PYTHONWARNINGS=ignore pip_install --no-deps -e .
  echo "$stamp" > .venv/.mlcicd-installed
fi
echo "setup: ready ($(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"

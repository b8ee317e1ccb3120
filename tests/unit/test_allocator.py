"""The allocator choice: when the server re-executes itself on jemalloc, and when it refuses to."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.allocator import (
    REEXEC_MARK,
    AllocatorError,
    allocator_in_maps,
    jemalloc_library,
    reexec_env,
)
from inference.settings import Allocator

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
LIBC_LINE = "7f20-7f30 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
JEMALLOC_MAPS = f"7f00-7f10 r-xp 00000000 08:01 42 {LIB}\n{LIBC_LINE}"


def test_maps_text_tells_which_allocator_is_mapped() -> None:
    assert allocator_in_maps(JEMALLOC_MAPS) == "jemalloc"
    assert allocator_in_maps(LIBC_LINE) == "glibc"


def test_auto_preloads_jemalloc_in_front_of_an_existing_preload() -> None:
    env = reexec_env(Allocator.auto, {"LD_PRELOAD": "/opt/other.so", "A": "1"}, "glibc", LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{LIB} /opt/other.so"
    assert env[REEXEC_MARK] == "1" and env["A"] == "1"


@pytest.mark.parametrize(
    ("choice", "env", "active", "library"),
    [
        (Allocator.system, {}, "glibc", LIB),  # glibc asked for
        (Allocator.auto, {}, "jemalloc", LIB),  # already on it (preloaded by the image)
        (Allocator.auto, {}, "glibc", None),  # not installed: go on with glibc
        (Allocator.auto, {REEXEC_MARK: "1"}, "glibc", LIB),  # preload ignored: no loop
    ],
)
def test_goes_on_as_it_is(
    choice: Allocator, env: dict[str, str], active: str, library: str | None
) -> None:
    assert reexec_env(choice, env, active, library) is None


def test_required_jemalloc_that_is_missing_is_refused_naming_the_package() -> None:
    with pytest.raises(AllocatorError, match="libjemalloc2"):
        reexec_env(Allocator.jemalloc, {}, "glibc", None)


def test_required_jemalloc_that_did_not_load_is_refused_not_retried() -> None:
    with pytest.raises(AllocatorError, match="not mapped"):
        reexec_env(Allocator.jemalloc, {REEXEC_MARK: "1"}, "glibc", LIB)


def test_library_lookup_takes_the_first_that_exists(tmp_path: Path) -> None:
    present = tmp_path / "libjemalloc.so.2"
    present.write_bytes(b"")
    assert jemalloc_library((str(tmp_path / "missing.so"), str(present))) == str(present)
    assert jemalloc_library((str(tmp_path / "missing.so"),)) is None

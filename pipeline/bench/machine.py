"""The machine a benchmark ran on, and the ISA cap ``mlcicd bench --isa`` applies.

Why it matters: the same code is 1.5-2x apart between an AVX2 and an AVX-512
CPU, and the peer dispatches its kernels by ISA as torch does, so a figure
without the ISA, core count and library versions cannot be compared. ``--isa
avx2`` caps every library of the run (torch's kernels, oneDNN, MKL and
CTranslate2) to AVX2, so an AVX-512 machine can also answer for AVX2-only CPUs.
It must be set before torch is imported: the CLI puts it in ``os.environ``
first thing, and every process of the run inherits it.

Left out: ARM (the targets are stated for x86) and NUMA layout.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from pipeline.bench.peer import peer_version
from pipeline.bench.targets import GIB

# What `--isa avx2` sets for every process of the run (servers, peer, bare-model
# timing): torch's own kernels, oneDNN, MKL and CTranslate2 each cap their ISA.
ISA_ENV = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "CT2_FORCE_CPU_ISA": "AVX2",
    },
}
_CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


def isa_label(flags: Sequence[str]) -> str:
    """The widest vector ISA the CPU offers, as the issue names them: AMX, AVX-512 or AVX2."""
    if "amx_tile" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "pre-AVX2"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU, ISA, memory, torch, oneDNN, the peer."""
    import torch

    cpu_model, flags = "", list[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu_model:
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = [f for f in value.split() if f in _CPU_FLAGS]
    cpu_model = cpu_model or platform.processor() or "unknown"
    onednn = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    cuda = torch.cuda.is_available()
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "cpu_flags": flags,
        "isa": isa_label(flags),
        # What the run's kernels were capped to (`--isa`), else None: the CPU's own.
        "isa_forced": forced.upper() if forced else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onednn": onednn.group(1) if onednn else None,
        "ctranslate2": peer_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "load_average_start": list(os.getloadavg()),
    }

"""EMBED_DEVICE -> the torch device string, a CPU worker's thread counts, and the CPU's flags.

Never imports torch or touches CUDA: CUDA must not start before a worker process forks and is
pinned to its GPU, and scripts/run.py, which starts every process, imports this module too.

`make worker DEVICE=cuda:1` pins a worker to GPU 1 by exporting CUDA_VISIBLE_DEVICES=1
and EMBED_DEVICE=cuda, so inside the process the one visible GPU is cuda:0. Set
EMBED_DEVICE=cuda:N directly only where CUDA_VISIBLE_DEVICES is unset.
"""

from __future__ import annotations

import os
import re

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of this CPU (the first `flags` line of /proc/cpuinfo); none where
    it cannot be read. runtime.cpu_bf16 and backends.cpu_int8_dot pick engines by them."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split())
    except OSError:
        pass
    return frozenset()


def device_parse(value: str) -> str:
    value = (value or "cpu").strip().lower()
    if not _DEVICE.match(value):
        raise ValueError(f"EMBED_DEVICE={value!r}: use cpu, cuda or cuda:N.")
    return value


def pin_env(device: str) -> dict[str, str]:
    """Environment that pins a worker process to `device` (used by scripts/run.py and the Makefile)."""
    device = device_parse(device)
    if device.startswith("cuda:"):
        return {"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1], "EMBED_DEVICE": "cuda"}
    return {"EMBED_DEVICE": device}


def cpu_threads(configured: int) -> tuple[int, int]:
    """(big-pass threads, small-pass threads) of a CPU worker: EMBED_THREADS for both when set.

    By default the passes of 3+ texts get half the cores this process may run on, at least one:
    they come under load, when the web tier, PostgreSQL and Redis want the other cores, and a
    model thread that waits for a core, or wakes for every operator, costs more than it gives.
    They run in bfloat16 on AMX or AVX512-BF16, else on a second ONNX Runtime session; two such
    passes at once in two drain loops but for bfloat16 on AMX (DECISIONS #21, #22, #23).
    The ONNX Runtime session of the passes of one or two texts gets all the cores: those passes
    come when the machine is quiet, and there fewer threads only make a single request wait
    longer (DECISIONS #21; docs/BENCHMARKS.md, "Where the CPU goes")."""
    if configured > 0:
        return configured, configured
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // 2), cores

"""EMBED_DEVICE -> the torch device string. Never imports torch or touches CUDA here.

`make worker DEVICE=cuda:1` pins a worker to GPU 1 by exporting CUDA_VISIBLE_DEVICES=1
and EMBED_DEVICE=cuda, so inside the process the one visible GPU is cuda:0. Set
EMBED_DEVICE=cuda:N directly only where CUDA_VISIBLE_DEVICES is unset.
"""

from __future__ import annotations

import os
import re

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")


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


def cpu_threads(configured: int) -> int:
    """Model threads of a CPU worker: EMBED_THREADS when set, else half the cores this process may
    run on (at least one). The worker shares the machine with the web tier, PostgreSQL and Redis;
    on this repo's 2-core box one thread gave 290-356 single-text misses/s from 32 clients against
    238-283 with two (DECISIONS #21). A machine that runs only workers sets EMBED_THREADS."""
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) // 2)

"""Packing texts into forward passes. Pure functions: no torch, no DB, no Redis."""

from __future__ import annotations

from collections.abc import Sequence


def batches_pack(lengths: Sequence[int], *, max_texts: int, max_tokens: int) -> list[list[int]]:
    """Indices of texts grouped into forward passes, sorted by length (shortest first).

    A pass holds at most `max_texts` texts, and its padded size (texts x longest text)
    stays within `max_tokens`; a single text longer than that still gets its own pass.
    Sorting by length keeps padding, and so wasted compute, small.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    packs: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # ascending order: the newest text is the longest so far
        if current and (len(current) + 1 > max_texts or (len(current) + 1) * longest > max_tokens):
            packs.append(current)
            current = []
        current.append(i)
    if current:
        packs.append(current)
    return packs

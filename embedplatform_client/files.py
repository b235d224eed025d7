"""Input and output files: texts in (one per line, or JSONL with a "text" field), vectors out
(a float32 .npy matrix, or JSONL lines {"index", "text"?, "embedding"}), one writer per kind.

Writers fill `<out>.partial` in input order, one part at a time, and can take up a partial file
that an interrupted run left: each knows how to cut it back to the parts its state file says
were written. `finish` renames it to the output.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import orjson

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class InputError(ValueError):
    """The input file cannot be embedded as it is (the message says where and why)."""


def texts_read(path: Path) -> tuple[list[str], str]:
    """The texts of `path`, in order, and the sha256 of its bytes.

    A .jsonl/.ndjson file holds one JSON object with a "text" string per line; any other file
    one text per line. Blank lines are refused, not skipped: skipping them would shift every
    later vector's row away from its line."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    texts: list[str] = []
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    for number, line in enumerate(lines, 1):
        if jsonl:
            try:
                record = json.loads(line)
            except ValueError:
                raise InputError(f"{path}:{number}: not a JSON object") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InputError(f'{path}:{number}: needs a "text" string field')
        else:
            text = line
        if not text.strip():
            raise InputError(f"{path}:{number}: empty text (the API refuses empty texts)")
        texts.append(text)
    if not texts:
        raise InputError(f"{path} holds no texts")
    return texts, digest


class Writer(Protocol):
    """Writes parts of the output in input order into `partial`."""

    suffixes: ClassVar[tuple[str, ...]]

    def __init__(self, partial: Path, total: int, *, with_text: bool) -> None: ...

    def resume(self, mark: int) -> bool:
        """Takes up the partial file as the last `write` left it (`mark`: what it returned; 0:
        start afresh). False when the file is gone: its parts must be written again."""

    def write(self, start: int, texts: list[str], vectors: np.ndarray) -> int:
        """Writes rows start.. and makes them durable; returns the mark to give `resume`."""

    def finish(self, out: Path) -> None:
        """Moves the complete partial file to `out`."""


class NpyWriter:
    """A (total, dims) float32 .npy, filled in place through a memory map: a resumed run writes
    the parts it still lacks into the same file."""

    suffixes: ClassVar[tuple[str, ...]] = (".npy",)

    def __init__(self, partial: Path, total: int, *, with_text: bool) -> None:
        self.partial = partial
        self.total = total
        self._map: np.memmap | None = None

    def resume(self, mark: int) -> bool:
        if not mark:
            self.partial.unlink(missing_ok=True)
            return True
        if not self.partial.exists():
            return False
        self._map = np.lib.format.open_memmap(self.partial, mode="r+")
        return self._map.shape[0] == self.total

    def write(self, start: int, texts: list[str], vectors: np.ndarray) -> int:
        if self._map is None or self._map.shape[1] != vectors.shape[1]:
            self._map = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32,
                                                  shape=(self.total, vectors.shape[1]))
        self._map[start:start + len(vectors)] = vectors
        self._map.flush()
        return 1  # not 0: resume keeps the file

    def finish(self, out: Path) -> None:
        if self._map is not None:
            self._map.flush()
            del self._map
            self._map = None
        os.replace(self.partial, out)


class JsonlWriter:
    """One line per text, {"index", "text", "embedding"} ("text" left out with with_text=False),
    appended part by part; a resumed run first cuts off whatever follows the last whole part."""

    suffixes: ClassVar[tuple[str, ...]] = JSONL_SUFFIXES

    def __init__(self, partial: Path, total: int, *, with_text: bool) -> None:
        self.partial = partial
        self.total = total
        self.with_text = with_text

    def resume(self, mark: int) -> bool:
        if not mark:
            self.partial.write_bytes(b"")
            return True
        if not self.partial.exists() or self.partial.stat().st_size < mark:
            return False
        with self.partial.open("r+b") as f:
            f.truncate(mark)
        return True

    def write(self, start: int, texts: list[str], vectors: np.ndarray) -> int:
        with self.partial.open("ab") as f:
            for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
                line: dict[str, object] = {"index": start + i}
                if self.with_text:
                    line["text"] = text
                line["embedding"] = vector
                f.write(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    def finish(self, out: Path) -> None:
        os.replace(self.partial, out)


WRITERS: tuple[type[Writer], ...] = (NpyWriter, JsonlWriter)


def writer_for(out: Path) -> type[Writer]:
    """The writer class for the output's suffix; InputError for a suffix none writes."""
    for kind in WRITERS:
        if out.suffix.lower() in kind.suffixes:
            return kind
    raise InputError(f"{out}: write .npy (a float32 matrix) or .jsonl (one JSON object per text)")

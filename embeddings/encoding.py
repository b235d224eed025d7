"""Turning a stored vector into what the client asked for. Pure functions, no DB.

One stored vector (the model's own output, full dims) serves every option: `dimensions`
keeps the first N components (Matryoshka-style, as OpenAI's text-embedding-3 does) and
then renormalizes; `normalize` L2-normalizes. See docs/DECISIONS.md.
"""

from __future__ import annotations

import base64

import numpy as np


def vectors_shape(vectors: np.ndarray, *, dimensions: int | None, normalize: bool) -> np.ndarray:
    """(n, d) float32 -> (n, dimensions or d) float32, renormalized when cut or asked."""
    out = vectors[:, :dimensions] if dimensions else vectors
    if normalize or (dimensions and dimensions < vectors.shape[1]):
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms == 0, 1, norms)
    return np.ascontiguousarray(out, dtype=np.float32)


def vector_encode(vector: np.ndarray, encoding_format: str) -> str | np.ndarray:
    """float -> the array itself, which orjson (OPT_SERIALIZE_NUMPY, as every answer is rendered)
    writes as a JSON array of numbers: float32 components in their shortest form that reads back
    as the same float32 (about 12 characters, where a Python float's would be 20), integers for a
    quantized vector; no Python float is made (docs/DECISIONS.md #51).
    base64 -> little-endian float32 bytes, as OpenAI sends them, or the raw bytes of a quantized
    (int8/uint8, packed) vector (embeddings/quantize.py)."""
    if encoding_format == "base64":
        raw = vector if vector.dtype.itemsize == 1 else np.ascontiguousarray(vector, dtype="<f4")
        return base64.b64encode(raw.tobytes()).decode("ascii")
    return vector

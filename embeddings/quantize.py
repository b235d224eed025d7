"""Quantized outputs (`output_dtype`): the vectors as int8, uint8 or packed sign bits, with
sentence-transformers' quantize_embeddings meaning (Voyage's names). The cache keeps float32;
quantizing happens on the way out, after `dimensions` and `normalize`.

int8 and uint8 scale each dimension between the minimum and maximum it takes over a fixed set
of calibration texts. A worker embeds that set when it loads a model (workers/calibration.py)
and stores the model's raw vectors in Redis; the ranges for a request are taken over those
vectors shaped as the request's own are (the same `dimensions` cut and renormalization, the same
`normalize`), so a cut or unnormalized vector is scaled by ranges of its own kind, not by a slice
of the full vectors' ranges. See docs/DECISIONS.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from dispatch.base import ServedModel
from dispatch.keys import calibration_key
from embeddings.encoding import vectors_shape
from embeddings.registry import ModelSpec, model_get
from embedplatform.errors import InvalidInput, Overloaded
from embedplatform.redisconn import redis_client

OUTPUT_DTYPES = ("float", "int8", "uint8", "binary", "ubinary")
SCALED = ("int8", "uint8")

NO_CALIBRATION = ("output_dtype {dtype} needs the calibration ranges of `{model}`, which no worker has "
                  "computed yet (they are made when a worker loads the model); retry shortly, or ask "
                  "for float, binary or ubinary.")
PROVIDER_NOT_SCALED = ("output_dtype {dtype} needs calibration ranges, which a provider model (`{model}`) "
                       "has none of; ask for float, binary or ubinary.")

_lock = threading.Lock()
_calibration: dict[tuple[str, str], np.ndarray] = {}  # (model, version) -> raw vectors (n, dims)
_ranges: dict[tuple[str, str, int | None, bool], np.ndarray] = {}


def memo_clear() -> None:
    """Forgets this process's copies (tests: a flushed Redis)."""
    with _lock:
        _calibration.clear()
        _ranges.clear()


def _calibration_vectors(spec: ModelSpec) -> np.ndarray | None:
    """The model's raw calibration vectors, read from Redis once per process (None: none yet)."""
    memo_key = (spec.name, spec.version)
    vectors = _calibration.get(memo_key)
    if vectors is None:
        raw = redis_client().get(calibration_key(spec.name, spec.version))
        if not isinstance(raw, bytes) or not raw:
            return None
        vectors = np.frombuffer(raw, dtype="<f4").reshape(-1, spec.dims)
        with _lock:
            _calibration[memo_key] = vectors
    return vectors


def quantize_ranges(spec: ModelSpec, *, dimensions: int | None, normalize: bool) -> np.ndarray | None:
    """(2, dims) float32: per-dimension min and max of the calibration vectors shaped as a request
    with these options shapes its own; None while no worker has calibrated the model."""
    memo_key = (spec.name, spec.version, dimensions, normalize)
    ranges = _ranges.get(memo_key)
    if ranges is None:
        vectors = _calibration_vectors(spec)
        if vectors is None:
            return None
        shaped = vectors_shape(vectors, dimensions=dimensions, normalize=normalize)
        ranges = np.vstack((shaped.min(axis=0), shaped.max(axis=0))).astype(np.float32)
        with _lock:
            _ranges[memo_key] = ranges
    return ranges


@dataclass(frozen=True)
class OutputDtype:
    """What the vectors become on the way out: `dtype`, with `ranges` for int8 and uint8."""

    dtype: str = "float"
    ranges: np.ndarray | None = None

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> float32 (n, d), int8/uint8 (n, d) or packed int8/uint8 (n, ceil(d/8)),
        as sentence_transformers.quantization.quantize_embeddings gives them."""
        if self.dtype == "float":
            return vectors
        if self.dtype in SCALED:
            assert self.ranges is not None
            starts = self.ranges[0]
            steps = (self.ranges[1] - starts) / 255
            steps = np.where(steps == 0, 1, steps)
            q = np.clip(np.floor((vectors - starts) / steps), 0, 255)
            return q.astype(np.uint8) if self.dtype == "uint8" else (q - 128).astype(np.int8)
        packed = np.packbits(vectors > 0, axis=-1)
        return packed if self.dtype == "ubinary" else (packed - 128).astype(np.int8)


FLOAT = OutputDtype()


def output_dtype_check(*, model: str, output_dtype: str) -> None:
    """Before any work: int8/uint8 of a provider model is a 400, of a model no worker has
    calibrated yet a 503 (an unknown model is left to the model's own check)."""
    if output_dtype not in SCALED:
        return
    if "/" in model:
        raise InvalidInput(PROVIDER_NOT_SCALED.format(dtype=output_dtype, model=model), param="output_dtype")
    spec = model_get(model)
    if spec is not None and _calibration_vectors(spec) is None:
        raise Overloaded(NO_CALIBRATION.format(dtype=output_dtype, model=model), retry_after=5,
                         code="model_not_calibrated")


def output_dtype_resolve(*, model: ServedModel, output_dtype: str, dimensions: int | None,
                         normalize: bool | None) -> OutputDtype:
    """The OutputDtype of a request for `model` with these options (normalize None: the model's
    default). InvalidInput (provider model) or Overloaded (not calibrated yet) for int8/uint8."""
    if output_dtype not in SCALED:
        return FLOAT if output_dtype == "float" else OutputDtype(output_dtype)
    if not isinstance(model, ModelSpec):
        raise InvalidInput(PROVIDER_NOT_SCALED.format(dtype=output_dtype, model=model.name), param="output_dtype")
    ranges = quantize_ranges(model, dimensions=dimensions,
                             normalize=model.normalize if normalize is None else normalize)
    if ranges is None:
        raise Overloaded(NO_CALIBRATION.format(dtype=output_dtype, model=model.name), retry_after=5,
                         code="model_not_calibrated")
    return OutputDtype(output_dtype, ranges)

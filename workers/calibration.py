"""Calibration for int8/uint8 outputs: a worker that loads a model embeds a fixed set of short
texts and stores the raw vectors in Redis (dispatch.keys.calibration_key, no TTL), from which the
web takes each dimension's range (embeddings/quantize.py), as sentence-transformers'
quantize_embeddings takes ranges from calibration embeddings.

The texts are made from a seeded generator, so every worker and every release calibrates a
model on the same set; the first worker to load a model version stores its vectors and the
others keep them, so ranges do not move while workers come and go.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import numpy as np

from dispatch.keys import calibration_key

if TYPE_CHECKING:
    from redis import Redis

    from workers.runtime import ModelRuntime

logger = logging.getLogger(__name__)

CALIBRATION_TEXTS = 1000

_VOCABULARY = (
    "the a an of to in for on with at by from about into over after under between through during "
    "data model search query document vector embedding cache server request answer question user "
    "price order invoice payment account login password error timeout network database index "
    "weather rain sun city river mountain forest ocean travel hotel flight train ticket museum "
    "music song guitar film actor book novel poem history war king queen science physics biology "
    "chemistry protein cell gene doctor hospital medicine health sleep food bread cheese coffee tea "
    "recipe garden flower tree dog cat bird horse football tennis match score team player coach "
    "school student teacher exam lesson code python function bug release version update install "
    "phone laptop screen battery camera photo video stream market stock bank loan tax law court "
    "judge contract policy energy solar wind oil car engine road bridge house rent buy sell cheap "
    "fast slow new old big small good bad happy sad red blue green how why what when where who "
    "is are was were can will should could find make use get show tell explain compare best"
)


def calibration_texts(count: int = CALIBRATION_TEXTS) -> list[str]:
    """`count` short varied texts (2 to 16 words), the same on every call."""
    rng = random.Random(18)
    vocabulary = _VOCABULARY.split()
    texts = []
    for _ in range(count):
        words = rng.choices(vocabulary, k=rng.randint(2, 16))
        text = " ".join(words)
        texts.append(text[0].upper() + text[1:] + rng.choice((".", "?", "!", "")))
    return texts


def calibration_vectors(runtime: ModelRuntime) -> np.ndarray:
    """The model's raw float32 vectors of the calibration texts (n, dims)."""
    _, vectors = runtime.encode(calibration_texts())
    return np.ascontiguousarray(vectors, dtype="<f4")


def calibration_store(runtime: ModelRuntime, redis: Redis) -> bool:
    """Embeds and stores the calibration vectors of `runtime`'s model version unless a worker
    already did; True when this call stored them."""
    spec = runtime.spec
    key = calibration_key(spec.name, spec.version)
    if redis.exists(key):
        return False
    stored = bool(redis.set(key, calibration_vectors(runtime).tobytes(), nx=True))
    if stored:
        logger.info("calibrated %s for int8/uint8 outputs on %d texts", spec.name, CALIBRATION_TEXTS)
    return stored

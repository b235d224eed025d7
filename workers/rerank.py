"""The runtime of a reranker (a cross-encoder) in a worker: score (query, document) pairs.

It serves the drain loop as a ModelRuntime does (runtime.py): `encode(texts)` gives token counts
and float32[n, 1], where each text is a pair (dispatch.frames.pair_join) and its "vector" is the
pair's score. Each pair is tokenized once (query and document together, truncated at the
model's limit the way sentence-transformers truncates: longest first), the pairs are packed into
passes by length under the drain loop's text and token budgets (batching.py), and each pass runs
the model's own forward and activation, so a score equals CrossEncoder.predict's for the pair.

Torch in float32 on a CPU; on a GPU, float16 where the model's scores stay within
RERANK_MAX_FP16_ERROR of float32 on sample pairs at load (else float32). No ONNX path yet.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dispatch.frames import pair_split
from workers.batching import batches_pack

if TYPE_CHECKING:
    from embeddings.registry import ModelSpec

logger = logging.getLogger(__name__)

# float16 on a GPU is kept where no sample pair's score moves more than this from float32's.
RERANK_MAX_FP16_ERROR = 0.01
_SAMPLE_PAIRS = [
    ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ("what is the capital of France?", "Berlin is the capital of Germany."),
    ("how do vaccines work", "Vaccines train the immune system to recognise a pathogen."),
    ("how do vaccines work", "The stock market closed higher on Tuesday."),
    ("python list sort", "list.sort() sorts the list in place; sorted() returns a new list."),
    ("python list sort", "A python is a large non-venomous snake."),
]


class RerankRuntime:
    """A cross-encoder loaded once; `encode` scores pair texts in as few passes as the budgets allow."""

    backend = "torch"
    parallel_passes = 1

    def __init__(self, spec: ModelSpec, device: str, threads: int = 0, precision: str = "auto"):
        import torch
        from sentence_transformers import CrossEncoder

        started = time.perf_counter()
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        self.model = CrossEncoder(spec.path, device=device, local_files_only=True, max_length=spec.max_tokens)
        self.model.eval()
        if self.model.num_labels != 1:
            raise ValueError(f"reranker {spec.name} gives {self.model.num_labels} scores per pair; one is served")
        self.tokenizer = self.model.tokenizer
        self._lock = threading.Lock()  # the fast tokenizer is not safe from two drain threads at once
        # A pass alone on the machine runs on every core; passes side by side (the worker's two
        # drain loops, under load) on `threads` each, as ModelRuntime's big passes do.
        self._threads = threads if threads > 0 else torch.get_num_threads()
        self._all_threads = max(self._threads, len(os.sched_getaffinity(0))) if device == "cpu" else self._threads
        self._active = 0
        self.precision_checked: dict[str, float] | None = None
        self.precision = "fp32"
        if device != "cpu" and precision in ("auto", "fp16"):
            self._half()
        elif precision not in ("auto", "fp32"):
            logger.warning("reranker %s: precision %s is not served for rerankers on %s; fp32", spec.name, precision,
                           device)
        # Two passes side by side on a CPU, each on the threads a big pass gets (as ModelRuntime).
        self.parallel_passes = 2 if device == "cpu" else 1
        self.encode(["4:warmwarm up"] * 3)
        logger.info("loaded reranker %s on %s (torch, %s) in %.1fs", spec.name, device, self.precision,
                    time.perf_counter() - started)

    def _half(self) -> None:
        texts = [f"{len(q)}:{q}{d}" for q, d in _SAMPLE_PAIRS]
        _, full = self.encode(texts)
        self.model.half()
        _, half = self.encode(texts)
        error = float(np.abs(full - half).max())
        if error <= RERANK_MAX_FP16_ERROR:
            self.precision, self.precision_checked = "fp16", {"max_score_error": round(error, 5)}
        else:
            self.model.float()
            logger.warning("reranker %s stays fp32: fp16 moves a sample score by %.4f (> %.4f)", self.spec.name,
                           error, RERANK_MAX_FP16_ERROR)

    def encode(self, texts: list[str], *, max_texts: int = 64,
               max_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(token counts int32[n], scores float32[n, 1]) of pair texts, in their order. Raises
        ValueError for a text that is not a pair (dispatch.frames.pair_split)."""
        pairs = [pair_split(t) for t in texts]
        with self._lock:
            self._active += 1
            alone = self._active == 1
        try:
            return self._encode(pairs, max_texts=max_texts, max_tokens=max_tokens,
                                threads=self._all_threads if alone else self._threads)
        finally:
            if self.device == "cpu" and alone:
                import torch

                torch.set_num_threads(self._threads)  # the drain thread's other models' passes: as before
            with self._lock:
                self._active -= 1

    def _encode(self, pairs: list[tuple[str, str]], *, max_texts: int, max_tokens: int,
                threads: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if self.device == "cpu":
            torch.set_num_threads(threads)  # OpenMP's thread count is the calling thread's own
        with self._lock:
            enc = self.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True,
                                 max_length=self.model.max_seq_length, padding=False)
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] | None = enc.get("token_type_ids")
        lengths = [len(x) for x in ids]
        out = np.empty((len(pairs), 1), dtype=np.float32)
        for pack in batches_pack(lengths, max_texts=max_texts, max_tokens=max_tokens):
            out[pack, 0] = self._forward([ids[i] for i in pack], [types[i] for i in pack] if types else None)
        return np.asarray(lengths, dtype=np.int32), out

    def _forward(self, ids: list[list[int]], types: list[list[int]] | None) -> np.ndarray:
        import torch

        features: dict[str, Any] = {"input_ids": ids}
        if types is not None:
            features["token_type_ids"] = types
        with self._lock:
            padded = self.tokenizer.pad(features, padding=True, return_tensors="pt")
        padded = {k: v.to(self.model.device) for k, v in padded.items()}
        with torch.inference_mode():
            scores = self.model(padded)["scores"]
            scores = scores.float()
            if self.model.activation_fn is not None:
                scores = self.model.activation_fn(scores)
        return scores.reshape(-1).cpu().numpy()

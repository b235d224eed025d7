"""The model runtime of a worker process: load a model once, encode lists of texts.

Tokenizes each text once (no padding), packs the texts into passes by length (batching.py),
pads each pass and hands it to a backend (backends.py), which runs the transformer and then
the model's own pooling and normalization. Vectors come back float32, on the host.

A pass's size picks its backend, among those chosen once at load (backends.backends_load):
  - passes under BIG_PASS_TEXTS texts come when the machine is quiet: they run with all the
    cores, on ONNX Runtime on a CPU (DECISIONS #20) and on torch on a GPU;
  - bigger passes come under load, when the web tier wants cores too: on a CPU they run on part
    of the cores (`threads`), in bfloat16 where the CPU has bfloat16 matrix instructions (#21,
    #23), else on a second ONNX Runtime session (#22), and, except for bfloat16 on AMX, two of
    them side by side (parallel_passes: the worker's drain loops) instead of one splitting
    every operator across all the cores. Same vectors either way (the load check: backends.py).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.batching import batches_pack
from workers.devices import cpu_flags

if TYPE_CHECKING:
    from embeddings.registry import ModelSpec
    from workers.backends import Backend, Features

logger = logging.getLogger(__name__)

# Passes of one or two texts run on the small passes' backend with all the cores: at that size
# bfloat16 is no faster than float32 ONNX Runtime, and fewer threads are slower (DECISIONS #21,
# #22; docs/BENCHMARKS.md, "Model runtimes in one process").
BIG_PASS_TEXTS = 3


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The bfloat16 matrix instructions of this CPU, from its flags: "amx" (AMX tiles, `amx_bf16`:
    Intel Sapphire Rapids and later), "avx512" (`avx512_bf16` dot products: AMD Zen 4 and later,
    Intel Cooper Lake) or "" (none: bfloat16 would be emulated, slowly)."""
    flags = cpu_flags(cpuinfo)
    return "amx" if "amx_bf16" in flags else "avx512" if "avx512_bf16" in flags else ""


class ModelRuntime:
    def __init__(self, spec: ModelSpec, device: str, threads: int = 0, backend: str | None = None,
                 onnx_dir: Path | None = None, precision: str = "auto", onnx_threads: int = 0):
        """`threads`: the CPU threads of a big pass (torch's intra-op threads, and those of the big
        passes' ONNX Runtime session; 0: torch's default); `onnx_threads`: those of the small
        passes' ONNX Runtime session (0: as `threads`). `backend` (auto, torch or onnx; auto: onnx
        on the CPU, torch elsewhere) and `precision` (auto, fp32, bf16, fp16 or int8) are the
        model's own, else EMBED_BACKEND and EMBED_PRECISION. Raises ValueError for settings it
        cannot serve."""
        # torch, sentence-transformers and the backends are imported here, not at the top: every
        # Celery worker imports this module (workers/bootsteps.py), the provider worker too, and
        # only a process that loads a model should pay for torch.
        import torch
        from sentence_transformers import SentenceTransformer

        from workers.backends import backends_load

        started = time.perf_counter()
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        self.model = SentenceTransformer(spec.path, device=device, local_files_only=True)
        self.model.max_seq_length = spec.max_tokens
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        dimension = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 6.1
        dims = dimension() if dimension else self.model.get_sentence_embedding_dimension()
        if dims != spec.dims:
            raise ValueError(f"model {spec.name} at {spec.path} gives {dims} dims; EMBED_MODELS says {spec.dims}")
        # The fast tokenizer is not safe to call from two drain threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        small_threads = onnx_threads or threads or torch.get_num_threads()
        self.small: Backend
        self.big: Backend  # the same object as small where big passes run no differently
        self.small, self.big = backends_load(
            self.model, spec, self._pad_texts, device=device, backend=backend, precision=precision,
            threads=threads, small_threads=small_threads, bf16_isa=cpu_bf16() if device == "cpu" else "",
            onnx_dir=onnx_dir)
        self.encode(["warm up"] * BIG_PASS_TEXTS)
        self.encode(["warm up"])
        big = "" if self.big is self.small else f"; big passes: {self.big.name}"
        if self.parallel_passes > 1:
            big += f" on {threads} thread(s), {self.parallel_passes} at once"
        checked = f"; checked against fp32: {self.precision_checked}" if self.precision_checked else ""
        logger.info("loaded %s on %s (%s, %s%s%s) in %.1fs", spec.name, device, self.backend, self.precision, big,
                    checked, time.perf_counter() - started)

    @property
    def backend(self) -> str:
        """The small passes' backend: onnx, or torch (a GPU, EMBED_BACKEND=torch, or a model that
        ONNX Runtime cannot serve)."""
        return self.small.name

    @property
    def precision(self) -> str:
        """What the passes compute in, as chosen at load: fp32, bf16, fp16 or int8; "small/big"
        where big passes compute in another one (bfloat16 big passes on a CPU: "fp32/bf16")."""
        return "/".join(dict.fromkeys([self.small.precision, self.big.precision]))

    @property
    def precision_checked(self) -> dict[str, float] | None:
        """The figures of the load check against float32 of the reduced precision serving, if any."""
        return self.big.checked or self.small.checked

    @property
    def parallel_passes(self) -> int:
        """How many passes this runtime runs well side by side (the worker's drain loops by
        default): two where big passes run on part of the cores (their own ONNX Runtime
        session, or bfloat16 without AMX), else one."""
        return self.big.parallel_passes

    # --- encode -------------------------------------------------------------------------------

    def encode(self, texts: list[str], *, max_texts: int = 64,
               max_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(token counts int32[n], vectors float32[n, dims]) in the order of `texts`."""
        ids = self._tokenize(texts)
        lengths = [len(x) for x in ids]
        out = np.empty((len(texts), self.spec.dims), dtype=np.float32)
        for pack in batches_pack(lengths, max_texts=max_texts, max_tokens=max_tokens):
            out[pack] = self._forward([ids[i] for i in pack])
        return np.asarray(lengths, dtype=np.int32), out

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        """One forward pass over token ids on the backend its size picks: float32[len(ids), dims]."""
        backend = self.big if len(ids) >= BIG_PASS_TEXTS else self.small
        return backend.forward(self._pad(ids))

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, truncated at the model's limit, unpadded."""
        with self._tokenizer_lock:
            enc = self.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length, padding=False,
                                 return_attention_mask=False)
        return enc["input_ids"]

    def _pad(self, ids: list[list[int]]) -> Features:
        """Token ids padded into the transformer's input tensors."""
        with self._tokenizer_lock:
            features = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        if "token_type_ids" not in features and "token_type_ids" in self.tokenizer.model_input_names:
            input_ids = features["input_ids"]
            features["token_type_ids"] = input_ids.new_zeros(input_ids.shape)
        return features

    def _pad_texts(self, texts: list[str]) -> Features:
        return self._pad(self._tokenize(texts))

    # --- what tests and benchmarks look at ----------------------------------------------------

    @property
    def _session(self) -> Any:
        """The small passes' ONNX Runtime session, or None."""
        return getattr(self.small, "session", None)

    @property
    def _session_big(self) -> Any:
        """The big passes' own ONNX Runtime session, or None."""
        return None if self.big is self.small else getattr(self.big, "session", None)

    @property
    def _bf16(self) -> Any:
        """The big passes' bfloat16 transformer (a TorchScript graph where tracing worked), or None."""
        return getattr(self.big, "graph", None)

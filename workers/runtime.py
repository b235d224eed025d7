"""The model runtime of a worker process: load once, encode lists of texts.

Tokenizes each text once (no padding), packs by length (batching.py), pads per pass and
runs the model under inference_mode. The output is the model's own embedding (after its
pooling and, where its modules say so, normalization), float32 on the host.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from embeddings.registry import ModelSpec
from workers.batching import batches_pack

logger = logging.getLogger(__name__)


class ModelRuntime:
    def __init__(self, spec: ModelSpec, device: str, threads: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer

        started = time.perf_counter()
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        self._torch = torch
        self.model = SentenceTransformer(spec.path, device=device, local_files_only=True)
        self.model.max_seq_length = spec.max_tokens
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        dimension = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 6.1
        dims = dimension() if dimension else self.model.get_sentence_embedding_dimension()
        if dims != spec.dims:
            raise ValueError(f"model {spec.name} at {spec.path} gives {dims} dims; EMBED_MODELS says {spec.dims}")
        self.encode(["warm up"])
        logger.info("loaded %s on %s in %.1fs", spec.name, device, time.perf_counter() - started)

    def encode(self, texts: list[str], *, max_texts: int = 64, max_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(token counts int32[n], vectors float32[n, dims]) in the order of `texts`."""
        max_len = self.model.max_seq_length
        enc = self.tokenizer(texts, truncation=True, max_length=max_len, padding=False, return_attention_mask=False)
        ids = enc["input_ids"]
        lengths = [len(x) for x in ids]
        out = np.empty((len(texts), self.spec.dims), dtype=np.float32)
        torch = self._torch
        for pack in batches_pack(lengths, max_texts=max_texts, max_tokens=max_tokens):
            features = self.tokenizer.pad({"input_ids": [ids[i] for i in pack]}, padding=True, return_tensors="pt")
            if "token_type_ids" not in features and "token_type_ids" in self.tokenizer.model_input_names:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            features = {k: v.to(self.device) for k, v in features.items()}
            with torch.inference_mode():
                emb = self.model(features)["sentence_embedding"]
            out[pack] = emb.float().cpu().numpy()
        return np.asarray(lengths, dtype=np.int32), out

"""The model runtime of a worker process: load once, encode lists of texts.

Tokenizes each text once (no padding), packs by length (batching.py), pads per pass and
runs the model. The output is the model's own embedding (after its pooling and, where its
modules say so, normalization), float32 on the host.

Two backends run the transformer (DECISIONS #20):
  torch  sentence-transformers' own modules under inference_mode (GPUs, and CPU on request);
  onnx   on CPU by default: the transformer exported once to ONNX (cached under VAR_DIR/onnx)
         and run by ONNX Runtime, 2-3x faster than eager torch for the small passes of
         interactive traffic. Pooling and normalization stay the model's own torch modules,
         and the export is checked against torch at load; a model that cannot be exported
         or does not match runs on torch.

Small passes (under BIG_PASS_TEXTS texts: the machine is quiet) and big ones (they come under
load, when the web tier wants cores too) run differently on a CPU:
  - with bfloat16 instructions (AMX tiles, Intel Sapphire Rapids and later; AVX512-BF16, AMD
    Zen 4 and later) big passes run the transformer's matrix products in bfloat16 (its Linear
    weights kept in bfloat16, the rest under torch.autocast, traced and frozen into one
    TorchScript graph; pooling and normalization in float32): 1.5-2x the float32 throughput at
    the pass sizes interactive traffic makes (DECISIONS #21, #23). EMBED_PRECISION=fp32 turns
    it off; at load it must match float32 to cosine >= 0.9999.
  - without them, big passes run on a second ONNX Runtime session with `threads` threads (half
    the cores by default). Same graph, same vectors.
Either way big passes get part of the cores (`threads`, half by default) and, except for
bfloat16 on AMX, the worker runs two drain loops (parallel_passes): two passes run side by side
instead of one pass splitting every operator across all cores (DECISIONS #22, #23).
Small passes run on the ONNX Runtime session with `onnx_threads` (all cores by default).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from embeddings.registry import ModelSpec
from workers.batching import batches_pack

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# The ONNX export and the bfloat16 path must reproduce float32 torch to this cosine on the
# check texts, or the model runs without them.
MIN_COSINE = 0.9999
_CHECK_TEXTS = ["warm up", "The quick brown fox jumps over the lazy dog near the river bank.",
                "Ünïcödé, 中文 and emoji 🎉 in one line", "word " * 300]
# Passes of one or two texts run on the ONNX Runtime session with all the cores: bfloat16 is no
# faster there (one thread, this repo's 2-core box: 4.2 against 8.0 ms for one text; 10.4
# against 12.0 ms for three), and one thread is slower (DECISIONS #22).
BIG_PASS_TEXTS = 3


def backend_default(device: str) -> str:
    return "onnx" if device == "cpu" else "torch"


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The bfloat16 matrix instructions of this CPU, from the flags in /proc/cpuinfo: "amx" (AMX
    tiles, `amx_bf16`: Intel Sapphire Rapids and later), "avx512" (`avx512_bf16` dot products:
    AMD Zen 4 and later, Intel Cooper Lake) or "" (none: bfloat16 would be emulated, slowly)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return "amx" if "amx_bf16" in flags else "avx512" if "avx512_bf16" in flags else ""
    except OSError:
        pass
    return ""


def _cosine_min(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.min(np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)))


class ModelRuntime:
    def __init__(self, spec: ModelSpec, device: str, threads: int = 0, backend: str | None = None,
                 onnx_dir: Path | None = None, precision: str = "auto", onnx_threads: int = 0):
        """`threads`: the CPU threads of a big pass (torch's intra-op threads, and those of the big
        passes' ONNX Runtime session; 0: torch's default); `onnx_threads`: those of the small
        passes' ONNX Runtime session (0: as `threads`)."""
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
        self.backend = "torch"
        self._session = None
        self._session_big = None  # ONNX Runtime with `threads` threads for big passes, without bfloat16
        # The fast tokenizer is not safe to call from two drain threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self._post_modules = list(self.model)[1:]  # pooling, normalization: after ONNX or bfloat16 passes
        self._bf16 = None  # the transformer with bfloat16 Linear weights, traced (_bf16_load)
        self._bf16_inputs: list[str] = []
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"EMBED_PRECISION={precision!r}: use auto, fp32 or bf16")
        small = onnx_threads or threads or torch.get_num_threads()  # the small passes' ONNX Runtime threads
        wanted = backend or backend_default(device)
        if wanted not in ("torch", "onnx"):
            raise ValueError(f"EMBED_BACKEND={wanted!r}: use torch or onnx")
        if wanted == "onnx":
            if device != "cpu":
                raise ValueError(f"EMBED_BACKEND=onnx runs on the CPU, not {device}; use torch there")
            self._onnx_load(onnx_dir, small)
        bf16_isa = cpu_bf16() if device == "cpu" else ""
        if device == "cpu" and (precision == "bf16" or (precision == "auto" and bf16_isa)):
            self._bf16_load()
        if self._session is not None and self._bf16 is None and 0 < threads < small:
            self._session_big = self._onnx_session(self._onnx_path, threads)
        # Big passes on part of the cores run two at once (the worker's drain loops), except
        # bfloat16 ones on AMX, where a second loop gave nothing (DECISIONS #21, #23).
        part = self._session_big is not None or (self._bf16 is not None and bf16_isa != "amx" and 0 < threads < small)
        self._parallel_passes = 2 if part else 1
        self.encode(["warm up"] * BIG_PASS_TEXTS)
        self.encode(["warm up"])
        big = ", bfloat16 big passes" if self._bf16 is not None else ", big passes" if self._session_big else ""
        if big and part:
            big += f" on {threads} thread(s), {self.parallel_passes} at once"
        logger.info("loaded %s on %s (%s%s) in %.1fs", spec.name, device, self.backend, big,
                    time.perf_counter() - started)

    @property
    def parallel_passes(self) -> int:
        """How many passes this runtime runs well side by side (the worker's drain loops by
        default): two where big passes run on part of the cores (their own ONNX Runtime
        session, or bfloat16 without AMX), else one."""
        return self._parallel_passes

    # --- encode -------------------------------------------------------------------------------

    def encode(self, texts: list[str], *, max_texts: int = 64, max_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(token counts int32[n], vectors float32[n, dims]) in the order of `texts`."""
        max_len = self.model.max_seq_length
        with self._tokenizer_lock:
            enc = self.tokenizer(texts, truncation=True, max_length=max_len, padding=False, return_attention_mask=False)
        ids = enc["input_ids"]
        lengths = [len(x) for x in ids]
        out = np.empty((len(texts), self.spec.dims), dtype=np.float32)
        for pack in batches_pack(lengths, max_texts=max_texts, max_tokens=max_tokens):
            out[pack] = self._forward([ids[i] for i in pack])
        return np.asarray(lengths, dtype=np.int32), out

    def _features(self, ids: list[list[int]]) -> dict:
        """Token ids padded into the transformer's input tensors."""
        with self._tokenizer_lock:
            features = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        if "token_type_ids" not in features and "token_type_ids" in self.tokenizer.model_input_names:
            features["token_type_ids"] = self._torch.zeros_like(features["input_ids"])
        return features

    def _input_names(self) -> list[str]:
        """The transformer inputs the exported and traced graphs take, in order."""
        return [n for n in self.tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

    def _forward(self, ids: list[list[int]], backend: str | None = None) -> np.ndarray:
        """One forward pass over token ids: float32[len(ids), dims]. `backend` forces one
        (onnx, onnx_big, bf16 or torch); by default the pass size picks it."""
        torch = self._torch
        features = self._features(ids)
        if backend is None:
            backend = self.backend
            if len(ids) >= BIG_PASS_TEXTS:
                backend = "bf16" if self._bf16 is not None else "onnx_big" if self._session_big is not None else backend
        with torch.inference_mode():
            if backend in ("onnx", "onnx_big", "bf16"):
                if backend != "bf16":
                    session = self._session_big if backend == "onnx_big" else self._session
                    feed = {name: features[name].numpy() for name in self._onnx_inputs}
                    hidden = torch.from_numpy(session.run(None, feed)[0])
                else:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        hidden = self._bf16(*[features[name] for name in self._bf16_inputs])
                    hidden = hidden.float()
                features = {"token_embeddings": hidden, "attention_mask": features["attention_mask"]}
                for module in self._post_modules:
                    features = module(features)
                emb = features["sentence_embedding"]
            else:
                features = {k: v.to(self.device) for k, v in features.items()}
                emb = self.model(features)["sentence_embedding"]
            return emb.float().cpu().numpy()

    # --- ONNX ---------------------------------------------------------------------------------

    def _onnx_load(self, onnx_dir: Path | None, threads: int) -> None:
        """Exports (once) and loads the transformer for ONNX Runtime; stays on torch on any failure."""
        try:
            from sentence_transformers.models import Transformer

            first = self.model[0]
            if not isinstance(first, Transformer):
                raise ValueError(f"its first module is {type(first).__name__}, not a Transformer")
            self._onnx_inputs = self._input_names()
            self._onnx_path = self._onnx_export(onnx_dir)
            self._session = self._onnx_session(self._onnx_path, threads)
            cosine = self._check("onnx")
            if cosine < MIN_COSINE:
                raise ValueError(f"the export gives cosine {cosine:.6f} to torch")
            self.backend = "onnx"
        except Exception as exc:
            self._session = None
            logger.warning("model %s stays on torch: ONNX Runtime could not serve it (%s)", self.spec.name, exc)

    @staticmethod
    def _onnx_session(path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: the worker shares its cores with the web
        # processes, and spinning took their CPU (measured: +15% texts/s at 32 clients without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _check(self, backend: str) -> float:
        """The lowest cosine between `backend` and float32 torch over the check texts (one pass
        and text by text)."""
        ids = self.tokenizer(_CHECK_TEXTS, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        want = self._forward(ids, backend="torch")
        got = np.concatenate([self._forward(ids, backend=backend)] + [self._forward([i], backend=backend) for i in ids])
        return _cosine_min(got, np.concatenate([want, want]))

    # --- bfloat16 -----------------------------------------------------------------------------

    def _bf16_load(self) -> None:
        """A copy of the transformer whose Linear weights are bfloat16, run under autocast (the
        products on AMX tiles, norms and softmax in float32); kept only if it matches float32."""
        import copy

        from sentence_transformers.models import Transformer

        torch = self._torch
        try:
            first = self.model[0]
            if not isinstance(first, Transformer):
                raise ValueError(f"its first module is {type(first).__name__}, not a Transformer")
            transformer = copy.deepcopy(first.auto_model).eval()
            for module in transformer.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(torch.bfloat16)
            self._bf16_inputs = self._input_names()
            self._bf16 = self._bf16_trace(_last_hidden(transformer, self._bf16_inputs))
            cosine = self._check("bf16")
            if cosine < MIN_COSINE:
                raise ValueError(f"it gives cosine {cosine:.6f} to float32")
        except Exception as exc:
            self._bf16 = None
            logger.warning("model %s stays in float32: bfloat16 passes could not serve it (%s)", self.spec.name, exc)

    def _bf16_trace(self, module):
        """`module` traced and frozen by TorchScript (one graph instead of eager modules: 804
        against 690-709 texts/s at passes of 8-18 texts, one thread, same vectors), or as it is
        when tracing fails. The load check then compares what is kept with float32."""
        torch = self._torch
        ids = self.tokenizer(_CHECK_TEXTS[:2], truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        features = self._features(ids)
        try:
            with warnings.catch_warnings(), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                warnings.simplefilter("ignore")  # TracerWarnings about branches on shapes; the check decides
                traced = torch.jit.trace(module, tuple(features[n] for n in self._bf16_inputs), check_trace=False,
                                         strict=False)
                return torch.jit.freeze(traced.eval())
        except Exception as exc:
            logger.info("model %s: bfloat16 passes run eagerly (tracing failed: %s)", self.spec.name, exc)
            return module

    def _onnx_export(self, onnx_dir: Path | None) -> Path:
        """The cached export of this model (keyed by its files and the exporter), made if missing.
        Written to a temporary name and renamed: workers starting together never read a half file."""
        import torch

        if onnx_dir is None:
            from django.conf import settings

            onnx_dir = settings.EMBED_ONNX_DIR
        weights = sorted(Path(self.spec.path).glob("*.safetensors")) + sorted(Path(self.spec.path).glob("*.bin"))
        stamp = "|".join([self.spec.path, self.spec.version, torch.__version__, str(ONNX_OPSET), *self._onnx_inputs]
                         + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights])
        path = Path(onnx_dir) / f"{self.spec.name.replace('/', '_')}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.onnx"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        # In a child process: tracing leaves this process's torch model giving wrong vectors
        # (measured: cosine 0.85 to a fresh load), so the exporter never touches the served one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
        os.close(fd)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "workers.runtime", self.spec.path, tmp, ",".join(self._onnx_inputs)],
                cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"the ONNX export failed: {done.stderr.strip()[-500:]}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        logger.info("exported %s to %s", self.spec.name, path)
        return path


def _last_hidden(transformer, names: list[str]):
    """`transformer` as a module of positional inputs `names` that returns last_hidden_state
    (what the ONNX export and the TorchScript trace take)."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    return LastHidden(transformer)


def onnx_export(model_path: str, out: str, names: list[str]) -> None:
    """Exports the transformer of the sentence-transformers model at `model_path` to `out`: inputs
    `names` (batch and token axes dynamic), output last_hidden_state."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    transformer = model[0].auto_model.eval()
    sample = model.tokenizer(["hello world", "a longer sample text"], padding=True, return_tensors="pt")
    if "token_type_ids" in names and "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"last_hidden_state": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(_last_hidden(transformer, names), tuple(sample[n] for n in names), out, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=ONNX_OPSET,
                          dynamo=False)


if __name__ == "__main__":  # python -m workers.runtime MODEL_PATH OUT input_ids,attention_mask,...
    onnx_export(sys.argv[1], sys.argv[2], sys.argv[3].split(","))

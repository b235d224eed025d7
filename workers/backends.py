"""How one forward pass of a model runs: one small class per way, behind one interface.

ModelRuntime (runtime.py) tokenizes, packs and pads; a Backend takes the padded input tensors
of one pass and gives the pass's sentence embeddings:

  TorchBackend  sentence-transformers' own modules: GPUs, and the CPU where asked
                (EMBED_BACKEND=torch) or where no other backend can serve the model.
  OnnxBackend   the transformer exported once to ONNX (cached under EMBED_ONNX_DIR) and run by
                ONNX Runtime: the CPU default, because eager torch pays a per-operator overhead
                that dominates the small passes of interactive traffic (DECISIONS #20). A second
                session of the same graph, on part of the cores, runs the big passes of a CPU
                without bfloat16 matrix instructions (#22).
  Bf16Backend   a copy of the transformer with bfloat16 Linear weights under autocast, traced
                and frozen by TorchScript: the big passes of a CPU with bfloat16 matrix
                instructions, which do the matrix products faster than float32 (#21, #23).
  OnnxBackend   again, on the export smoothed (SmoothQuant) and quantized to int8 by ONNX
                Runtime's dynamic quantization (precision int8; cached next to the export):
                every pass (#39).
  AutocastBackend  TorchBackend under float16 or bfloat16 autocast: a GPU's reduced precision
                (fp16 by default there; #39).

ONNX and bfloat16 run the transformer only; the model's own pooling and normalization modules
follow in float32, so every backend gives the model's own embedding. backends_load picks the
backends of a model once, at load. A backend that fails to load or does not reproduce float32
torch on the check texts is dropped with a warning: it costs speed, never correctness. A reduced
precision (bf16, fp16, int8) must also keep, on SAMPLE_TEXTS, a cosine to float32 of at least
EMBED_MIN_COSINE and a mean top-10 neighbour overlap of at least EMBED_MIN_NEIGHBOUR_OVERLAP,
or the model stays in float32 (logged with the figure that failed).

torch is imported at the top: nothing imports this module but ModelRuntime when it loads a
model, and the ONNX export's child process (`python -m workers.backends`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from django.conf import settings
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Transformer

from workers.devices import cpu_flags

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

    from embeddings.registry import ModelSpec

logger = logging.getLogger(__name__)

Features = dict[str, torch.Tensor]  # the padded input tensors of one pass, by input name

ONNX_OPSET = 17
# An ONNX export or a bfloat16 copy must reproduce float32 torch to this cosine on the check
# texts, or the model runs without it.
MIN_COSINE = 0.9999
# Short, long (truncated at the model's limit) and non-ASCII texts, checked in one pass and
# one by one, so a graph that baked in one shape or one padding fails the check.
CHECK_TEXTS = ["warm up", "The quick brown fox jumps over the lazy dog near the river bank.",
               "Ünïcödé, 中文 and emoji 🎉 in one line", "word " * 300]
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "onnx", "torch")
# The texts a reduced precision is checked on (cosine and top-10 neighbours among themselves):
# 64 fixed sentences on a few topics, so that neighbours mean something.
_TOPICS = ["the weather", "a football match", "cooking pasta", "a new phone", "the stock market", "a trip to Rome",
           "learning French", "a broken car"]
_FORMS = ["I want to talk about {}.", "What do you think of {}?", "Yesterday's news was all about {}.",
          "My friend wrote a long letter on {} and why it matters to her.", "{}: a short guide",
          "Nobody at work could stop talking about {} today", "Is {} worth the money and the time?",
          "A children's story about {}, with pictures."]
SAMPLE_TEXTS = [form.format(topic) for topic in _TOPICS for form in _FORMS]
NEIGHBOURS = 10
INT8_RECIPE = "int8-pc-sq65"  # in the quantized file's name: a new recipe makes a new file
# SmoothQuant's migration strength: the share of an input channel's range moved into the weights.
# 0.6 to 0.75 pass the load check on all-MiniLM-L6-v2, 0.65 by the widest margin (DECISIONS #39).
SMOOTH_ALPHA = 0.65
# The texts the int8 smoothing is calibrated on: others than SAMPLE_TEXTS, which check the result.
CALIBRATION_TEXTS = [f"{head} {topic}" for head in (
    "Please tell me about", "Here is a note on", "Short:", "Why does", "A review of", "Questions and answers on",
    "Notes from the meeting about", "I never liked") for topic in (
    "the river flooding", "a guitar lesson", "tax returns", "the best pizza in town", "running shoes",
    "a chess opening", "quantum computers", "the city council vote", "a rainy weekend", "the museum's new wing",
    "garden tomatoes", "an email from my boss")] + CHECK_TEXTS[:3] + ["a", "ok", "The", "hello world"]


class Backend(ABC):
    """Runs one padded pass of a model. Called from several drain threads at once."""

    name: str
    precision: str = "fp32"  # what it computes the transformer's matrix products in
    # The figures of its load check against float32 (precision_check), where it had one.
    checked: dict[str, float] | None = None
    # How many passes of this backend run well side by side (the worker's drain loops): more
    # than one only where a pass runs on part of the cores (DECISIONS #22, #23).
    parallel_passes: int = 1

    def forward(self, features: Features) -> np.ndarray:
        """The pass's embeddings: float32[texts, dims] on the host."""
        with torch.inference_mode():
            return self.embed(features).float().cpu().numpy()

    @abstractmethod
    def embed(self, features: Features) -> torch.Tensor:
        """The pass's sentence embeddings (under inference_mode)."""

    def for_big_passes(self, threads: int, small_threads: int) -> Backend:
        """The backend of the big passes when they get `threads` of the `small_threads` threads
        of the small ones: this one, unless running on fewer threads needs its own instance."""
        return self


class TorchBackend(Backend):
    """sentence-transformers' own modules on the model's device."""

    name = "torch"

    def __init__(self, model: SentenceTransformer, device: str):
        self.model = model
        self.device = device

    def embed(self, features: Features) -> torch.Tensor:
        features = {k: v.to(self.device) for k, v in features.items()}
        return self.model(features)["sentence_embedding"]


class AutocastBackend(TorchBackend):
    """The same modules under a GPU's float16 or bfloat16 autocast: no copy of the weights.
    Untested on a GPU by the test suite (DECISIONS #39)."""

    def __init__(self, model: SentenceTransformer, device: str, precision: str):
        super().__init__(model, device)
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.bfloat16

    def embed(self, features: Features) -> torch.Tensor:
        with torch.autocast(torch.device(self.device).type, dtype=self.dtype):
            return super().embed(features).float()


class _PooledBackend(Backend):
    """A backend that computes the transformer's last hidden state its own way; the model's
    pooling and normalization modules (float32 torch) make the embedding from it."""

    def __init__(self, inputs: list[str], post_modules: list[torch.nn.Module]):
        self.inputs = inputs  # the transformer inputs the graph takes, in order
        self.post_modules = post_modules

    @abstractmethod
    def hidden(self, features: Features) -> torch.Tensor:
        """The transformer's last hidden state, float32."""

    def embed(self, features: Features) -> torch.Tensor:
        pooled = {"token_embeddings": self.hidden(features), "attention_mask": features["attention_mask"]}
        for module in self.post_modules:
            pooled = module(pooled)
        return pooled["sentence_embedding"]


class OnnxBackend(_PooledBackend):
    """The exported transformer on an ONNX Runtime session with `threads` threads. ONNX Runtime
    sessions are safe to call from several threads."""

    name = "onnx"

    def __init__(self, path: Path, threads: int, inputs: list[str], post_modules: list[torch.nn.Module],
                 precision: str = "fp32"):
        super().__init__(inputs, post_modules)
        self.path = path
        self.precision = precision  # int8 for the quantized export
        self.session = _onnx_session(path, threads)

    def hidden(self, features: Features) -> torch.Tensor:
        feed = {name: features[name].numpy() for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def for_big_passes(self, threads: int, small_threads: int) -> Backend:
        """A second session of the same graph with `threads` threads where that is fewer than the
        small passes' session has: big passes then run two at once, each on part of the cores,
        instead of one splitting every operator across all of them (DECISIONS #22)."""
        if 0 < threads < small_threads:
            big = OnnxBigBackend(self.path, threads, self.inputs, self.post_modules, self.precision)
            big.checked = self.checked
            return big
        return self


class OnnxBigBackend(OnnxBackend):
    """OnnxBackend's second session, for big passes on part of the cores."""

    name = "onnx_big"
    parallel_passes = 2


class Bf16Backend(_PooledBackend):
    """The transformer with bfloat16 Linear weights under autocast: the matrix products in
    bfloat16, norms and softmax in float32."""

    name = "bf16"
    precision = "bf16"

    def __init__(self, graph: torch.nn.Module, inputs: list[str], post_modules: list[torch.nn.Module],
                 parallel_passes: int):
        super().__init__(inputs, post_modules)
        self.graph = graph  # traced and frozen by TorchScript, or the eager module where tracing failed
        self.parallel_passes = parallel_passes

    def hidden(self, features: Features) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = self.graph(*[features[name] for name in self.inputs])
        return hidden.float()


# --- choosing the backends of a model -----------------------------------------------------------

def backend_default(device: str) -> str:
    return "onnx" if device == "cpu" else "torch"


def backends_load(model: SentenceTransformer, spec: ModelSpec, pad: Callable[[list[str]], Features], *,
                  device: str, backend: str | None, precision: str, threads: int, small_threads: int,
                  bf16_isa: str, onnx_dir: Path | None) -> tuple[Backend, Backend]:
    """(small, big): the backends of the passes under and from ModelRuntime's BIG_PASS_TEXTS
    texts (the same object where both run alike). `pad` tokenizes and pads texts into a pass;
    `threads` and `small_threads` are the threads of big and small passes; `bf16_isa` is
    runtime.cpu_bf16's answer ("" on a GPU). Raises ValueError for a backend or precision that
    cannot be asked for; a backend that fails to load, or a reduced precision that fails its
    check against float32, is skipped (logged)."""
    if precision not in PRECISIONS:
        raise ValueError(f"EMBED_PRECISION={precision!r}: use auto, fp32, bf16, fp16 or int8")
    wanted = backend if backend not in (None, "auto") else backend_default(device)
    if wanted not in ("torch", "onnx"):
        raise ValueError(f"EMBED_BACKEND={wanted!r}: use auto, torch or onnx")
    if wanted == "onnx" and device != "cpu":
        raise ValueError(f"EMBED_BACKEND=onnx runs on the CPU, not {device}; use torch there")
    if precision == "int8" and wanted != "onnx":
        raise ValueError(f"precision int8 of model {spec.name} runs on ONNX Runtime on the CPU, not torch on {device}")
    reference = TorchBackend(model, device)
    small: Backend = reference
    if wanted == "onnx":
        small = _onnx_load(model, spec, reference, pad, onnx_dir, small_threads) or reference
    if device != "cpu":
        if precision == "fp32":
            return small, small
        # A GPU computes in float16 unless asked for bfloat16 (DECISIONS #39; untested on a GPU here).
        half = "bf16" if precision == "bf16" else "fp16"
        reduced = _reduced_load(spec, reference, pad, half, lambda: AutocastBackend(model, device, half))
        return (reduced, reduced) if reduced else (small, small)
    if precision == "fp16":
        # float16 has no fast matrix products on a CPU: served in float32 rather than refused, so
        # one EMBED_MODELS can serve GPU and CPU workers alike.
        logger.warning("model %s stays in float32: fp16 runs on a GPU only, this worker runs on the CPU", spec.name)
    if precision == "int8":
        if isinstance(small, OnnxBackend):  # else ONNX Runtime could not serve it: torch, logged
            fp32 = small
            small = _reduced_load(spec, reference, pad, "int8", lambda: OnnxBackend(
                onnx_int8_cached(fp32.path, pad, fp32.inputs), small_threads, fp32.inputs, fp32.post_modules,
                "int8")) or fp32
        return small, small.for_big_passes(threads, small_threads)
    big = None
    if device == "cpu" and (precision == "bf16" or (precision == "auto" and bf16_isa)):
        # Two bfloat16 passes side by side where they run on part of the cores, except on AMX,
        # where a second one gave nothing (DECISIONS #21, #23).
        parallel = 2 if bf16_isa != "amx" and 0 < threads < small_threads else 1
        big = _bf16_load(model, spec, reference, pad, parallel)
    return small, big or small.for_big_passes(threads, small_threads)


def _reduced_load(spec: ModelSpec, reference: Backend, pad: Callable[[list[str]], Features], precision: str,
                  make: Callable[[], Backend]) -> Backend | None:
    """The backend `make` gives, where it loads and passes precision_check, else None (logged)."""
    try:
        backend = make()
    except Exception as exc:
        logger.warning("model %s stays in float32: %s could not be loaded (%s)", spec.name, precision, exc)
        return None
    failed = precision_check(reference, backend, pad)
    if failed:
        logger.warning("model %s stays in float32: %s fails the check against float32 (%s)", spec.name, precision,
                       failed)
        return None
    return backend


def precision_check(reference: Backend, candidate: Backend, pad: Callable[[list[str]], Features]) -> str:
    """Why `candidate`, a reduced precision, may not serve in place of float32 `reference` ("" when it
    may): its vectors of SAMPLE_TEXTS against float32's, by the lowest cosine (EMBED_MIN_COSINE) and
    the mean overlap of each text's top-10 neighbours among the others (EMBED_MIN_NEIGHBOUR_OVERLAP).
    The figures are kept on `candidate.checked`."""
    want = reference.forward(pad(SAMPLE_TEXTS))
    got = candidate.forward(pad(SAMPLE_TEXTS))
    cosines = _cosines(got, want)
    overlap = neighbour_overlap(want, got)
    candidate.checked = {"min_cosine": round(float(cosines.min()), 6), "mean_cosine": round(float(cosines.mean()), 6),
                         "neighbour_overlap": round(overlap, 4)}
    min_cosine = float(settings.EMBED_MIN_COSINE)
    min_overlap = float(settings.EMBED_MIN_NEIGHBOUR_OVERLAP)
    failed = []
    if cosines.min() < min_cosine:
        failed.append(f"lowest cosine {cosines.min():.4f} < EMBED_MIN_COSINE {min_cosine}")
    if overlap < min_overlap:
        failed.append(f"top-{NEIGHBOURS} neighbour overlap {overlap:.3f} < EMBED_MIN_NEIGHBOUR_OVERLAP {min_overlap}")
    return "; ".join(failed)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def neighbour_overlap(want: np.ndarray, got: np.ndarray, k: int = NEIGHBOURS) -> float:
    """The mean share of each text's k nearest other texts (by cosine) under `want` that are
    also among its k nearest under `got`: 1.0 where a search would rank alike."""
    def nearest(vectors: np.ndarray) -> np.ndarray:
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    a, b = nearest(want), nearest(got)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def cosine_to_float32(reference: Backend, candidate: Backend, pad: Callable[[list[str]], Features]) -> float:
    """The lowest cosine between `candidate` and float32 `reference` over the check texts (in
    one pass, and text by text)."""
    want = reference.forward(pad(CHECK_TEXTS))
    got = np.concatenate([candidate.forward(pad(CHECK_TEXTS))] + [candidate.forward(pad([t])) for t in CHECK_TEXTS])
    want = np.concatenate([want, want])
    return float(np.min(np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)))


def _transformer(model: SentenceTransformer) -> Transformer:
    first = model[0]
    if not isinstance(first, Transformer):
        raise ValueError(f"its first module is {type(first).__name__}, not a Transformer")
    return first


def _input_names(model: SentenceTransformer) -> list[str]:
    """The transformer inputs the exported and traced graphs take, in order."""
    names = model.tokenizer.model_input_names
    return [n for n in names if n in ("input_ids", "attention_mask", "token_type_ids")]


def _onnx_load(model: SentenceTransformer, spec: ModelSpec, reference: Backend, pad: Callable[[list[str]], Features],
               onnx_dir: Path | None, threads: int) -> OnnxBackend | None:
    """The model's transformer exported (once) and loaded for ONNX Runtime, or None where it cannot
    be, or does not match torch."""
    try:
        _transformer(model)
        inputs = _input_names(model)
        backend = OnnxBackend(onnx_export_cached(spec, inputs, onnx_dir), threads, inputs, list(model)[1:])
        cosine = cosine_to_float32(reference, backend, pad)
        if cosine < MIN_COSINE:
            raise ValueError(f"the export gives cosine {cosine:.6f} to torch")
        return backend
    except Exception as exc:
        logger.warning("model %s stays on torch: ONNX Runtime could not serve it (%s)", spec.name, exc)
        return None


def _onnx_session(path: Path, threads: int) -> ort.InferenceSession:
    # Imported here, not at the top: GPU workers run torch only and never load ONNX Runtime.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: the worker shares its cores with the web
    # processes, and spinning threads take CPU the web needs (DECISIONS #20).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _bf16_load(model: SentenceTransformer, spec: ModelSpec, reference: Backend, pad: Callable[[list[str]], Features],
               parallel_passes: int) -> Bf16Backend | None:
    """A copy of the transformer whose Linear weights are bfloat16, or None where it cannot be
    made or does not match float32."""
    try:
        transformer = copy.deepcopy(_transformer(model).auto_model).eval()
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
        inputs = _input_names(model)
        graph = _bf16_trace(_LastHidden(transformer, inputs), pad(CHECK_TEXTS[:2]), inputs, spec.name)
        backend = Bf16Backend(graph, inputs, list(model)[1:], parallel_passes)
        cosine = cosine_to_float32(reference, backend, pad)
        if cosine < MIN_COSINE:
            raise ValueError(f"it gives cosine {cosine:.6f} to float32")
        failed = precision_check(reference, backend, pad)
        if failed:
            raise ValueError(f"it fails the check against float32: {failed}")
        return backend
    except Exception as exc:
        logger.warning("model %s stays in float32: bfloat16 passes could not serve it (%s)", spec.name, exc)
        return None


def _bf16_trace(module: torch.nn.Module, sample: Features, inputs: list[str], name: str) -> torch.nn.Module:
    """`module` traced and frozen by TorchScript, or as it is when tracing fails. One graph runs
    faster than eager modules, with the same vectors (DECISIONS #21; docs/BENCHMARKS.md, "Model
    runtimes in one process"); the load check then compares what is kept with float32."""
    try:
        with warnings.catch_warnings(), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            warnings.simplefilter("ignore")  # TracerWarnings about branches on shapes; the check decides
            traced = torch.jit.trace(module, tuple(sample[n] for n in inputs), check_trace=False, strict=False)
            return torch.jit.freeze(traced.eval())
    except Exception as exc:
        logger.info("model %s: bfloat16 passes run eagerly (tracing failed: %s)", name, exc)
        return module


# --- the ONNX export ----------------------------------------------------------------------------

class _LastHidden(torch.nn.Module):
    """A transformer as a module of positional inputs `names` that returns last_hidden_state
    (what the ONNX export and the TorchScript trace take)."""

    def __init__(self, inner: torch.nn.Module, names: list[str]):
        super().__init__()
        self.inner = inner
        self.names = names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.inner(**dict(zip(self.names, args, strict=True))).last_hidden_state


def onnx_export_cached(spec: ModelSpec, inputs: list[str], onnx_dir: Path | None) -> Path:
    """The cached export of this model (keyed by its files and the exporter), made if missing.
    Written to a temporary name and renamed: workers starting together never read a half file."""
    weights = sorted(Path(spec.path).glob("*.safetensors")) + sorted(Path(spec.path).glob("*.bin"))
    stamp = "|".join([spec.path, spec.version, torch.__version__, str(ONNX_OPSET), *inputs]
                     + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights])
    folder = Path(onnx_dir if onnx_dir is not None else settings.EMBED_ONNX_DIR)
    path = folder / f"{spec.name.replace('/', '_')}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    def export(tmp: str) -> None:
        # In a child process: tracing for the export leaves the traced torch model giving wrong
        # vectors (DECISIONS #20), so the exporter never touches the served one.
        done = subprocess.run(
            [sys.executable, "-m", "workers.backends", spec.path, tmp, ",".join(inputs)],
            cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the ONNX export failed: {done.stderr.strip()[-500:]}")

    _write_whole(path, export)
    logger.info("exported %s to %s", spec.name, path)
    return path


def _write_whole(path: Path, write: Callable[[str], None]) -> None:
    """Has `write(tmp)` write a temporary file next to `path`, then renames it into place:
    workers starting together never read a half-written model file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cpu_int8_dot(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has 8-bit dot-product instructions (VNNI: `avx512_vnni`, `avx_vnni`, or AMX
    `amx_int8`). Elsewhere (or where the flags cannot be read) int8 weights are quantized to 7 bits."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(cpuinfo))


def onnx_int8_cached(path: Path, pad: Callable[[list[str]], Features], inputs: list[str]) -> Path:
    """The export at `path` smoothed (_smooth) and its MatMuls quantized to int8 by ONNX Runtime's
    dynamic quantization (weights per output channel, activations per pass), cached next to it;
    made if missing, under a temporary name and renamed, like the export. `pad` tokenizes the
    calibration texts into the graph's `inputs`.

    Without the smoothing, every MatMul in int8 fell below the load check on all-MiniLM-L6-v2
    (lowest cosine 0.988), and keeping the feed-forward down projections in float32 to pass it
    cost most of the speed (DECISIONS #39; docs/BENCHMARKS.md, "Precision: int8 against fp32")."""
    # Without VNNI (x86 with AVX2 only), ONNX Runtime's uint8 x int8 kernels add pairs of products
    # in 16 bits, which saturate: 7-bit weights (reduce_range), as its documentation advises for such
    # CPUs. On an AVX2 EPYC the lowest cosine on the test texts went 0.978 -> 0.990 (DECISIONS #39).
    reduce_range = not cpu_int8_dot()
    out = path.with_name(f"{path.stem}.{INT8_RECIPE}{'-w7' if reduce_range else ''}.onnx")
    if out.exists():
        return out
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    def write(tmp: str) -> None:
        smoothed = _smooth(onnx.load(str(path)), pad, inputs)
        quantize_dynamic(smoothed, tmp, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                         extra_options={"MatMulConstBOnly": True})

    _write_whole(out, write)
    logger.info("quantized %s to int8: %s", path.name, out)
    return out


def _smooth(model: onnx.ModelProto, pad: Callable[[list[str]], Features], inputs: list[str]) -> onnx.ModelProto:
    """SmoothQuant (Xiao et al., 2023): the same float32 function, easier to quantize. A few input
    channels of a transformer's MatMuls (after LayerNorm, after GELU) carry values far larger than
    the rest, and a per-tensor int8 scale for the activations leaves the others a few levels. For
    each input X of MatMuls with constant weights W (one per group sharing X: query, key and value),
    s_j = max|X_j|^a / max|W_j.|^(1-a) over CALIBRATION_TEXTS (a = SMOOTH_ALPHA): a Mul node divides
    X's channel j by s_j and W's row j is multiplied by it."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    weights = {w.name: w for w in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    graph_inputs = {i.name for i in model.graph.input}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if (weight is not None and len(weight.dims) == 2 and uses[node.input[1]] == 1
                and node.input[0] not in graph_inputs):
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return model

    # Each group's input per channel: the largest magnitude over the calibration texts.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in groups)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peak: dict[str, np.ndarray] = {}
    for i in range(0, len(CALIBRATION_TEXTS), 8):
        features = pad(CALIBRATION_TEXTS[i:i + 8])
        found = session.run(list(groups), {name: features[name].numpy() for name in inputs})
        for x, values in zip(groups, found, strict=True):
            m = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
            peak[x] = np.maximum(peak[x], m) if x in peak else m
    del probe, session

    muls: dict[str, onnx.NodeProto] = {}
    for x, nodes in groups.items():
        ws = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        w_peak = np.abs(np.concatenate(ws, axis=1)).max(axis=1)
        live = (peak[x] > 0) & (w_peak > 0)  # a channel never seen, or with no weight: left as it is
        scale = np.where(live, peak[x] ** SMOOTH_ALPHA / np.where(live, w_peak, 1) ** (1 - SMOOTH_ALPHA), 1.0)
        scale = np.clip(scale, 1e-5, None).astype(np.float32)
        inverse = f"{x}/smooth_inv"
        model.graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), inverse))
        muls[x] = helper.make_node("Mul", [x, inverse], [f"{x}/smooth"], name=f"{x}/smooth")
        for node, w in zip(nodes, ws, strict=True):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32),
                                                                     node.input[1]))
    members = {n.output[0] for nodes in groups.values() for n in nodes}  # outputs are unique in a graph
    ordered: list[onnx.NodeProto] = []
    for node in model.graph.node:  # each Mul just before the first MatMul that reads it
        node = copy.deepcopy(node)
        if node.output[0] in members:
            x = node.input[0]
            if x in muls:
                ordered.append(muls.pop(x))
            node.input[0] = f"{x}/smooth"
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def onnx_export(model_path: str, out: str, names: list[str]) -> None:
    """Exports the transformer of the sentence-transformers model at `model_path` to `out`: inputs
    `names` (batch and token axes dynamic), output last_hidden_state."""
    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    transformer = cast(torch.nn.Module, model[0].auto_model).eval()
    sample = model.tokenizer(["hello world", "a longer sample text"], padding=True, return_tensors="pt")
    if "token_type_ids" in names and "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"last_hidden_state": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(transformer, names), tuple(sample[n] for n in names), out, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=ONNX_OPSET,
                          dynamo=False)


if __name__ == "__main__":  # python -m workers.backends MODEL_PATH OUT input_ids,attention_mask,...
    onnx_export(sys.argv[1], sys.argv[2], sys.argv[3].split(","))

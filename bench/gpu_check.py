"""GPU path of the embedding worker: device pinning, the worker's ModelRuntime on CUDA, and its
throughput against the raw sentence-transformers model on the same GPU in the same run.

Run on a GPU machine (see docs/BENCHMARKS.md):
    python bench/gpu_check.py --model-dir DIR --reference ref.npz [--device cuda:0]
`--reference` holds texts and CPU vectors made by `--make-reference` on a CPU machine, so the
check also proves the GPU vectors equal the CPU ones. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _texts(n: int) -> list[str]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "embeddings", "batch", "many", "short", "texts", "fast"]
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(6 + i % 7)) + f" #{i}" for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--make-reference", action="store_true", help="write CPU vectors for the reference texts")
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()

    from workers.devices import pin_env

    # Pinned before torch is imported: CUDA then sees only the chosen GPU.
    device_env = {"EMBED_DEVICE": "cpu"} if args.make_reference else pin_env(args.device)
    os.environ.update(device_env)
    import numpy as np
    import torch

    from embeddings.registry import ModelSpec
    from workers.runtime import ModelRuntime

    spec = ModelSpec(name="all-MiniLM-L6-v2", path=args.model_dir, dims=384, max_tokens=256, version="gpu-check")
    ref_texts = _texts(256)
    if args.make_reference:
        runtime = ModelRuntime(spec, "cpu", backend="torch", precision="fp32")  # the reference: float32 torch on the CPU
        _, vectors = runtime.encode(ref_texts)
        np.savez(args.reference, vectors=vectors)
        print(json.dumps({"reference": args.reference, "n": len(ref_texts)}))
        return 0

    device = os.environ["EMBED_DEVICE"]  # "cuda": the one visible GPU
    out: dict = {"pinned_env": device_env, "visible_gpus": torch.cuda.device_count(),
                 "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    started = time.perf_counter()
    runtime = ModelRuntime(spec, device)
    out["load_seconds"] = round(time.perf_counter() - started, 2)
    _, vectors = runtime.encode(ref_texts)
    ref = np.load(args.reference)["vectors"]
    cos = (vectors * ref).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(ref, axis=1)
    out["cosine_to_cpu_min"] = float(cos.min())

    texts = _texts(args.n)
    raw = runtime.model  # the same SentenceTransformer, called the plain way

    def timed(fn) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    raw.encode(texts[:2000], batch_size=32)  # warm-up
    for bs in (32, 256):
        secs = timed(lambda bs=bs: raw.encode(texts, batch_size=bs))
        out[f"raw_b{bs}_texts_per_s"] = round(len(texts) / secs)
    for max_texts in (64, 256, 1024):
        secs = timed(lambda m=max_texts: runtime.encode(texts, max_texts=m, max_tokens=1 << 20))
        out[f"runtime_pass{max_texts}_texts_per_s"] = round(len(texts) / secs)
    singles = []
    for t in texts[:200]:
        singles.append(timed(lambda t=t: runtime.encode([t])) * 1000)
    out["runtime_single_p50_ms"] = round(statistics.median(singles), 2)
    singles = [timed(lambda t=t: raw.encode([t])) * 1000 for t in texts[:200]]
    out["raw_single_p50_ms"] = round(statistics.median(singles), 2)
    out["ratio_runtime_pass64_to_raw_b32"] = round(out["runtime_pass64_texts_per_s"] / out["raw_b32_texts_per_s"], 2)
    out["ratio_runtime_pass256_to_raw_b32"] = round(out["runtime_pass256_texts_per_s"] / out["raw_b32_texts_per_s"], 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

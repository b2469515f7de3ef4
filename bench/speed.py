"""Speed of the encoder's forms, side by side in one run: float32 torch, the int8 copy (ONNX Runtime),
and the fast static model when one is built; and each one's start-up (process start → first decision).

1. ``trainer quantize`` writes the int8 copy of the float32 model, checking average precision against
   it on the pairs no default model trained on (the untrained half of QQP dev, the held-out tenths of
   MRPC and Twitter, PAWS dev).
2. Texts/s of each encoder alone on the same generated stream, in alternating rounds (A B A B ...) so
   that the machine's noise falls on both, each run in its own process; the median, and the ratio.
3. ``worker scan`` posts/s with each (encoder + exact path + index + decisions), in process.
4. Start-up: ``python -m worker scan`` on a one-post file, wall clock from process start to exit, the
   median of three: the time before a worker gives its first decision.
5. On a CUDA machine, the same encoder and scan figures on the GPU (autocast); the figures say when
   there was none.

    python -m bench.speed --out bench/results/speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import dump
from bench.throughput import ROOT, default_model, encoder_rate, make_stream, scan_rate
from devkit.posts import read_jsonl

DATA = ROOT.parent / "shared" / "data"
SCAN = [sys.executable, "-m", "worker", "scan"]
RATE = [sys.executable, "-m", "bench.speed", "--rate-of"]


def startup_seconds(model: Path, work: Path, repeats: int = 3) -> float:
    """Median wall clock of ``python -m worker scan`` over one post (start, load, decide, write, exit)."""
    post = work / "one.jsonl"
    post.write_text(json.dumps({"id": "p1", "text": "Is this a repost?", "tenant": "default"}) + "\n")
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [
                *SCAN,
                "--model",
                str(model),
                "--input",
                str(post),
                "--output",
                str(work / f"out-{i}.jsonl"),
                "--quiet",
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_rates(
    models: dict[str, Path], posts: Path, batch: int, rounds: int, device: str = "cpu"
) -> dict[str, float]:
    """Median texts/s of each encoder over ``rounds`` alternating runs on the same texts, each run in a
    process of its own: torch's and ONNX Runtime's thread pools in one process slow each other (both
    spin after a call), which made int8 look no faster than float32 in one process."""
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            out = subprocess.run(
                [*RATE, str(model), "--posts", str(posts), "--batch", str(batch), "--device", device],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            rates[name].append(float(out.stdout.strip().splitlines()[-1]))
    return {name: statistics.median(values) for name, values in rates.items()}


def rate_of(model: Path, posts: Path, batch: int, device: str) -> float:
    """Texts/s of one model's encoder alone, after one warm-up batch (``--rate-of``)."""
    from worker.model.encode import load_encoder

    texts = [str(post["text"]) for post in read_jsonl(posts)]
    encoder = load_encoder(model, device)
    encoder.embed(texts[:batch])  # first-call set-up is start-up's, not throughput's
    return encoder_rate(encoder, texts, batch)


def measure(n: int, batch: int, rounds: int, max_pairs: int, work: Path) -> dict[str, Any]:
    from trainer.quantize import quantize
    from trainer.recipes import held_out_sets, other_dev_sets
    from worker.model.encode import load_encoder, pick_device

    model = default_model()
    int8_dir = work / "int8"
    sets, others = held_out_sets(DATA, max_pairs), other_dev_sets(DATA, max_pairs)
    print(f"quantising {model.name} and checking AP on {len(sets) + len(others)} pair sets", flush=True)
    # measured here, not gated: the figures are the point
    int8_manifest, checks = quantize(model, int8_dir, sets, max_ap_drop=1.0, report_sets=others)
    models = {"float32": model, "int8": int8_dir}
    fast = ROOT / "models" / "fast"
    if (fast / "manifest.json").is_file():
        models["fast (static)"] = fast
    posts_file, _ = make_stream(n, seed=11, out_dir=work / "stream")
    texts = [str(post["text"]) for post in read_jsonl(posts_file)]
    print(f"encoders alone on {len(texts)} posts, {rounds} alternating rounds", flush=True)
    rates = interleaved_rates(models, posts_file, batch, rounds)
    encoders = {name: load_encoder(path, "cpu") for name, path in models.items()}
    print("worker scan (in process) on the same posts", flush=True)
    threshold = {name: encoder.threshold for name, encoder in encoders.items()}
    scans = {
        name: scan_rate(encoder, posts_file, batch, threshold[name], work)
        for name, encoder in encoders.items()
    }
    print("start-up (process start → first decision)", flush=True)
    startup = {name: startup_seconds(path, work) for name, path in models.items()}
    gpu: dict[str, Any] = {"device": None}
    if pick_device("auto") == "cuda":
        on_gpu = load_encoder(model, "cuda")
        gpu = {
            "device": "cuda",
            "encoder texts/s": interleaved_rates(
                {"float32 (autocast)": model}, posts_file, batch, rounds, "cuda"
            ),
            "scan posts/s": scan_rate(on_gpu, posts_file, batch, on_gpu.threshold, work),
        }
    base = rates["float32"]
    return {
        "model": encoders["float32"].version,
        "int8 model": int8_manifest.version,
        "posts": len(texts),
        "batch": batch,
        "rounds": rounds,
        "ap": [
            {
                "set": c.name,
                "pairs": c.pairs,
                "float32": c.float32,
                "int8": c.int8,
                "drop": c.drop,
                "gated": c.gated,
            }
            for c in checks
        ],
        "encoder texts/s": rates,
        "encoder speed vs float32": {name: rate / base for name, rate in rates.items()},
        "scan posts/s": scans,
        "startup s": startup,
        "gpu": gpu,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\nmodel {result['model']} → int8 {result['int8 model']};"
        f" {result['posts']} posts, batch {result['batch']}"
    )
    if result["ap"]:
        print(f"{'pair set':<30} {'pairs':>6} {'AP float32':>11} {'AP int8':>8} {'drop':>8}")
        for row in result["ap"]:
            print(
                f"{row['set']:<30} {row['pairs']:>6} {row['float32']:>11.4f}"
                f" {row['int8']:>8.4f} {row['drop']:>+8.4f}"
            )
    else:
        print("AP: no labelled pairs (../shared/data absent)")
    print(f"\n{'encoder':<16} {'texts/s':>9} {'vs fp32':>8} {'scan posts/s':>13} {'start-up s':>11}")
    for name, rate in result["encoder texts/s"].items():
        print(
            f"{name:<16} {rate:>9.1f} {result['encoder speed vs float32'][name]:>7.2f}x"
            f" {result['scan posts/s'][name]:>13.1f} {result['startup s'][name]:>11.2f}"
        )
    gpu = result["gpu"]
    print("\nGPU: " + (json.dumps(gpu) if gpu["device"] else "none on this machine (CUDA not available)"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1500, help="posts in the generated stream")
    parser.add_argument("--batch", type=int, default=256, help="texts per embed call (the worker's batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-pairs", type=int, default=2000, help="pairs per AP set")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    parser.add_argument("--rate-of", type=Path, help=argparse.SUPPRESS)  # one encoder's rate, in a child
    parser.add_argument("--posts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rate_of is not None:
        print(rate_of(args.rate_of, args.posts, args.batch, args.device))
        return
    with tempfile.TemporaryDirectory(prefix="twinflag-speed-") as work:
        result = measure(args.n, args.batch, args.rounds, args.max_pairs, Path(work))
    result["command"] = "python -m bench.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    print_table(result)
    dump(result, args.out)


if __name__ == "__main__":
    main()

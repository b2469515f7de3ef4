"""``python -m bench [--quick] [--out bench] [--only SECTION ...] [--report-only]``: run the benchmarks and
write ``bench/REPORT.md`` with its plots.

Sections: throughput, stream_quality, pair_quality, latency, index_scaling (the default run), and the
speed sections speed (int8 against float32), fast_model (the fast model against MinHash LSH and
Jaccard) and pipeline (the pipeline's own cost with a near-free encoder), which run only when named in
``--only``: they take minutes each on a 2-core box (fast_model 5 here; speed quantises the model first,
pipeline builds a 100k-point index), and fast_model needs ``models/fast`` (``make fast``), which a fresh
checkout lacks. Each writes ``OUT/results/<section>.json`` (with its machine and the command that
reproduces it); the report is then rendered from every result present, so sections can be run
separately (``--only``) or on another machine and the report reassembled (``--report-only``). Default:
about 6.5 minutes on a 2-core CPU box (the budget is 30); ``--quick``: a few minutes, for a check that
everything runs, not for figures to quote (it overwrites those sections' results: give it another --out).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import latency, pair_quality, stream_quality, throughput
from bench.report import load_results, machine, render
from bench.throughput import ROOT, default_model


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


SECTIONS = ("throughput", "stream_quality", "pair_quality", "latency", "index_scaling")
SPEED_SECTIONS = ("speed", "fast_model", "pipeline")  # run only when named in --only (module docstring)


def _throughput(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    n, batches, naive_n = (128, [32], 10) if quick else (1000, [16, 64, 256], 200)
    model = default_model()
    command = (
        f"python -m bench.throughput --n {n} --batches {' '.join(map(str, batches))} --naive-n {naive_n} "
        f"--model {_rel(model)}"
    )
    return {**throughput.measure(n, 7, batches, naive_n, model, work), "command": command}


def _stream_quality(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    n = 0 if quick else 2000
    results = stream_quality.measure(n, 11, work, stream_quality.models_to_compare(), quick=quick)
    stream_quality.plot(results, out / "pr_curves.png")
    return {
        "results": results,
        "command": f"python -m bench.stream_quality --n {n} --plot {_rel(out)}/pr_curves.png",
    }


def _pair_quality(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    max_pairs = 100 if quick else 1000
    return {
        **pair_quality.measure(max_pairs),
        "command": f"python -m bench.pair_quality --max-pairs {max_pairs}",
    }


def _latency(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    tp = done.get("throughput") or {}
    if "run" in tp:
        rate, basis = (
            0.5 * float(tp["run"]["docs_per_s"]),
            "50% of the `worker run` rate measured in this run",
        )
    else:
        rate, basis = 5.0, "a fixed 5 posts/s: no run throughput measured in this invocation"
    n = 20 if quick else 400
    result = latency.measure(rate, n, 13, default_model(), work)
    latency.plot(result, out / "latency_cdf.png")
    return {
        **result,
        "rate_basis": basis,
        "command": f"python -m bench.latency --rate {rate:.2f} --n {n} --plot {_rel(out)}/latency_cdf.png",
    }


def _index_scaling(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    from bench import index_scaling

    # Default: random unit vectors on the quick ladder (10k, 50k) and structured vectors (``--data
    # lowrank``) to 200k, about 6 minutes here; the 1M ladder takes longer than the 30-minute budget on
    # its own (rendered too when bench/results/index_scaling_1m_lowrank.json exists). --quick: 5k points.
    quick_args = ["--max-points", "5000", "--queries", "64", "--recall-queries", "20"]
    runs = [quick_args] if quick else [["--quick"], ["--max-points", "200000", "--data", "lowrank"]]
    results = []
    for i, args in enumerate(runs):
        path = work / f"index_scaling_{i}.json"
        index_scaling.main([*args, "--out", str(path)])
        results.append(
            {**json.loads(path.read_text()), "command": "python -m bench.index_scaling " + " ".join(args)}
        )
    first = results[0]
    if len(results) > 1:
        first["lowrank"] = results[1]
    return first


def _via_main(
    main: Callable[[list[str]], object], module: str, args: list[str], work: Path
) -> dict[str, Any]:
    """A bench script run through its own ``main`` (its parser's defaults, its own JSON), read back."""
    path = work / f"{module.rsplit('.', 1)[-1]}.json"
    main([*args, "--out", str(path)])
    return {**json.loads(path.read_text()), "command": f"python -m {module} " + " ".join(args)}


def _speed(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    from bench import speed

    n, batch, rounds, max_pairs = (128, 32, 1, 100) if quick else (1500, 256, 3, 2000)
    result = speed.measure(n, batch, rounds, max_pairs, work)
    speed.print_table(result)
    command = f"python -m bench.speed --n {n} --batch {batch} --rounds {rounds} --max-pairs {max_pairs}"
    return {**result, "command": command}


def _fast_model(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    from bench import fast_model

    if not (fast_model.FAST / "manifest.json").is_file():
        raise SystemExit(f"fast_model: no model at {_rel(fast_model.FAST)} (`make fast` builds it)")
    # its measurement lives in its main (no measure function); the same arguments as its defaults
    quick_args = ["--speed-n", "1000", "--speed-repeats", "1", "--n", "300", "--max-pairs", "100"]
    full_args = ["--speed-n", "5000", "--speed-repeats", "2", "--n", "2000", "--max-pairs", "2000"]
    return _via_main(fast_model.main, "bench.fast_model", quick_args if quick else full_args, work)


def _pipeline(quick: bool, out: Path, work: Path, done: dict[str, Any]) -> dict[str, Any]:
    from bench import pipeline

    # its measure takes its parser's Namespace, so through its main; the same arguments as its defaults
    quick_args = ["--n", "500", "--points", "5000", "--model-n", "200", "--timeout-s", "120"]
    full_args = ["--n", "9058", "--points", "100000", "--model-n", "3000"]
    return _via_main(pipeline.main, "bench.pipeline", quick_args if quick else full_args, work)


RUNNERS: dict[str, Callable[[bool, Path, Path, dict[str, Any]], dict[str, Any]]] = {
    "throughput": _throughput,
    "stream_quality": _stream_quality,
    "pair_quality": _pair_quality,
    "latency": _latency,
    "index_scaling": _index_scaling,
    "speed": _speed,
    "fast_model": _fast_model,
    "pipeline": _pipeline,
}


def ensure_zero_shot(path: Path, data_dir: Path) -> None:
    """The zero-shot model every section compares against, exported here on a fresh checkout (models/
    is not tracked): all-MiniLM-L6-v2 from its PyPI package, its threshold calibrated on the dev set
    when the pair data is there, as ``python -m trainer export --dev`` would."""
    if (path / "manifest.json").is_file():
        return
    from trainer.export import export_pretrained
    from trainer.recipes import find_pair_files
    from worker.model.pretrained import default_base_model

    dev = find_pair_files(data_dir)[1] if data_dir.is_dir() else None
    print(f"exporting the zero-shot model to {path} (dev set: {dev})", flush=True)
    export_pretrained(default_base_model(), path, dev, dev_max_pairs=2000, device="auto")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a check in a few minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where REPORT.md and the PNGs go")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS + SPEED_SECTIONS,
        help=f"run only these sections (default: {' '.join(SECTIONS)}; {', '.join(SPEED_SECTIONS)} run only "
        "when named here)",
    )
    parser.add_argument("--zero-shot", type=Path, help="zero-shot model directory (default models/zero-shot)")
    parser.add_argument("--report-only", action="store_true", help="re-render from OUT/results/*.json")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    top = ("python -m bench " + " ".join(shlex.quote(a) for a in given)).strip()
    if args.zero_shot:
        throughput.ZERO_SHOT = args.zero_shot.resolve()
    if not args.report_only:
        ensure_zero_shot(throughput.ZERO_SHOT, pair_quality.DATA)
    results_dir = args.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    if not args.report_only:
        for section in args.only or SECTIONS:
            started = time.monotonic()
            print(f"== {section}", flush=True)
            info = machine()
            with tempfile.TemporaryDirectory(prefix=f"twinflag-bench-{section}-") as tmp:
                result = RUNNERS[section](args.quick, args.out, Path(tmp), done)
            result.update(machine=info, quick=args.quick, wall_s=round(time.monotonic() - started, 1))
            if args.quick:
                result["command"] += "  (as run by python -m bench --quick)"
            done[section] = result
            (results_dir / f"{section}.json").write_text(json.dumps(result, indent=2))
            print(f"== {section} done in {result['wall_s']:.0f} s", flush=True)
    results = load_results(results_dir)
    if torch.cuda.is_available() and "gpu" not in results:
        results["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "lines": ["A CUDA device is present; the sections above ran with `device=auto` where noted."],
        }
    (args.out / "REPORT.md").write_text(render(results, args.out, top))
    print(f"wrote {args.out / 'REPORT.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

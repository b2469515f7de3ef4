"""Renders ``bench/REPORT.md`` and its plots from the section results in ``bench/results/*.json``.

Each section's JSON carries the machine it ran on and the command that reproduces it, so a report
assembled from runs on different machines (CPU here, a GPU box later) still says which number came
from where. The speed sections are in ``bench.report_speed``; formatting both use, in
``bench.report_format``.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.report_format import fixed, provenance
from bench.report_speed import fast_model_section, pipeline_section, speed_section


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, torch version, CUDA device (if any) and the date, for every figure."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m_at_start": round(load, 2),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------------- plots


def plot_throughput(tp: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = tp["sweep"]
    xs = [r["batch"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(xs, [r["encoder_docs_per_s"] for r in sweep], marker="o", label="encoder alone")
    ax.plot(xs, [r["scan_docs_per_s"] for r in sweep], marker="s", label="scan (full batch step)")
    if "run" in tp:
        ax.scatter(
            [tp["default_batch"]], [tp["run"]["docs_per_s"]], marker="*", s=150, label="worker run (Tansu)"
        )
        ax.scatter([1], [tp["naive_docs_per_s"]], marker="v", s=80, label="naive 1-at-a-time loop")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size (documents)", ylabel="documents/s", title="Throughput vs batch size (CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_index(ix: dict[str, Any], out: Path, long_run: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    structured = long_run or ix.get("lowrank")
    series = [  # (axes, field, marker, colour, what): the same five lines for each kind of data
        (a, "upsert_per_s", "o", "C0", "upsert/s"),
        (a, "after_qps", "s", "C1", "queries/s after opt."),
        (b, "after_recall", "o", "C0", "recall@10 ef 128"),
        (b, "after_recall_ef512", "s", "C1", "recall@10 ef 512"),
        (b, "after_dup_at_1", "^", "C2", "noisy copy first"),
    ]
    for rows, style, label in (
        (ix["rows"], "-", "random"),
        (structured["rows"] if structured else [], "--", "lowrank"),
    ):
        if not rows:
            continue
        pts = [r["points"] for r in rows]
        for axes, field, marker, colour, what in series:
            axes.plot(pts, [r[field] for r in rows], marker + style, color=colour, label=f"{what} ({label})")
    a.set(xscale="log", yscale="log", xlabel="points", title="Qdrant Edge rates")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    b.set(xscale="log", ylim=(0, 1.02), xlabel="points", title="HNSW vs exact search")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- render


def _throughput(tp: dict[str, Any]) -> list[str]:
    lines = ["## Throughput", ""]
    lines += [
        f"Stream: `devkit.posts` generated, {tp['n']} posts (seed {tp['seed']}); model `{tp['model']}` "
        f"({tp['model_version']}); fresh embedded index (Qdrant Edge) per measurement; CPU.",
        "",
    ]
    if "run" in tp:
        run = tp["run"]
        cost = tp["pipeline_cost"]
        verdict = "meets" if cost <= 0.15 else "misses"
        if cost < 0:
            verdict = (
                "meets (the run outpaced the encoder-alone baseline: its exact fast path skips embedding "
                "repeated texts, and the baseline itself is noisy on this shared machine)"
            )
        lines += [
            "| path | documents/s | ratio to encoder alone (same run) |",
            "|---|---|---|",
            f"| encoder alone, batch {tp['default_batch']} (mean of before/after the run) | "
            f"{tp['encoder_mean_docs_per_s']:.1f} | 1.000 |",
            f"| `worker run` through Tansu, first → last decision | {run['docs_per_s']:.1f} | "
            f"**{tp['run_vs_encoder']:.3f}** |",
            "| `worker run`, busy time only (Σ batch `total_ms` in its log) | "
            f"{run['busy_docs_per_s']:.1f} | "
            f"{run['busy_docs_per_s'] / tp['encoder_mean_docs_per_s']:.3f} |",
            "| naive loop: poll 1 → embed 1 → search 1 → produce 1 → flush → commit "
            f"({tp['naive_n']} msgs) | "
            f"{tp['naive_docs_per_s']:.1f} | {tp['naive_vs_encoder']:.3f} |",
            *(
                [
                    "| encoder alone, one text per call (the naive loop's own baseline, measured just before "
                    f"it) | {tp['encoder_one_docs_per_s']:.1f} | naive / this: "
                    f"{tp['naive_vs_encoder_one']:.3f} |"
                ]
                if "encoder_one_docs_per_s" in tp
                else []
            ),
            f"| MinHash LSH (datasketch, 128 perms, char 5-grams), query + insert | "
            f"{tp['minhash_docs_per_s']:.1f} | "
            f"{tp['minhash_docs_per_s'] / tp['encoder_ref_docs_per_s']:.2f} |",
            "",
            f"**Pipeline cost vs encoder alone at batch {tp['default_batch']}: {100 * cost:.1f}%** — "
            f"{verdict} the issue-3 target of ≤ 15%. "
            f"`worker run` is {tp['run_vs_naive']:.1f}× the naive loop.",
            "",
            "On equal work — charging the encoder only for the "
            f"{100 * (1 - tp['exact_share']):.1f}% of posts the pipeline actually embeds (the rest are "
            "decided by the exact fast path) — the run reaches "
            f"{tp['run_vs_encoder'] * (1 - tp['exact_share']):.3f} of the encoder's rate, a pipeline cost of "
            f"{100 * (1 - tp['run_vs_encoder'] * (1 - tp['exact_share'])):.1f}%.",
            "",
            f"`worker run` timing: all {tp['n']} posts are produced first; the worker is then started "
            "and the clock runs from its first decision to its last on the decisions topic, so process "
            "start-up, model "
            f"load, group join and the first batch ({run['first_batch']} documents) are excluded; "
            f"{run['documents'] - run['first_batch']} documents in {run['span_s']:.1f} s, {run['batches']} "
            f"batches.",
            "",
        ]
    lines += [
        "### Batch-size sweep (encoder alone and `scan`, same texts, same run)",
        "",
        "| batch | encoder docs/s | scan docs/s | scan / encoder |",
        "|---|---|---|---|",
    ]
    for r in tp["sweep"]:
        lines.append(
            f"| {r['batch']} | {r['encoder_docs_per_s']:.1f} | {r['scan_docs_per_s']:.1f} | "
            f"{r['scan_vs_encoder']:.3f} |"
        )
    lines += [
        "",
        "Each row is one encoder pass then one `scan` pass, one after the other: load from other users of "
        "the machine can change between the two, so a row whose ratio departs from about 1 by much more than "
        "the exact-path share below is noise, not pipeline cost (the run's ratio above brackets its run with "
        "two encoder passes for this reason).",
        "",
        "![throughput vs batch size](throughput_batch.png)",
        "",
    ]
    if "run" in tp and tp["run"]["mean_ms"]:
        mm = tp["run"]["mean_ms"]
        total = mm.get("total", 0.0) or sum(v for k, v in mm.items() if k != "total")
        lines += [
            "### Where the time goes per batch in `worker run` (its per-batch log line: "
            f"`BatchResult.timings_ms` plus the loop's flush and commit; "
            f"mean over {tp['run']['batches']} batches)",
            "",
            "| stage | ms / batch | share of batch total |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {v:.1f} | {100 * v / total:.1f}% |" for k, v in mm.items() if k != "total"]
        lines += [f"| **total** | {total:.1f} | 100% |", ""]
    if tp.get("naive_ms_per_message"):
        nm = tp["naive_ms_per_message"]
        lines += [
            "Naive loop, mean ms per message:",
            "",
            "| " + " | ".join(nm) + " | total |",
            "|" + "---|" * (len(nm) + 1),
            "| " + " | ".join(f"{v:.1f}" for v in nm.values()) + f" | {sum(nm.values()):.1f} |",
            "",
        ]
    lines += [
        f"{100 * tp['exact_share']:.1f}% of this stream's posts repeat an earlier post's normalised text: "
        "the exact fast path decides those without embedding them, which is why `scan` can outrun the "
        "encoder alone (which embeds every text).",
        "",
    ]
    return lines + provenance(tp)


def _stream(sq: dict[str, Any]) -> list[str]:
    lines = [
        "## Stream quality (reposts: copies, spam-style edits, semantic rewrites; "
        "near-misses must stay unflagged)",
        "",
    ]
    for r in sq["results"]:
        lines += [
            f"### {r['stream']}: {r['posts']} posts, {r['duplicates']} reposts to find (`{r['path']}`)",
            "",
            "| method | shipped threshold | P | R | F1 | best-F1 threshold | P | R | F1 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, m in r["methods"].items():
            s, b = m.get("shipped"), m["best"]
            shipped = (
                f"{fixed(m['shipped_threshold'])} | {fixed(s['precision'])} | {fixed(s['recall'])} | "
                f"{fixed(s['f1'])}"
                if s
                else "— | — | — | —"
            )
            lines.append(
                f"| {label} | {shipped} | {fixed(b['threshold'])} | {fixed(b['precision'])} | "
                f"{fixed(b['recall'])} | **{fixed(b['f1'])}** |"
            )
        kinds = sorted({k for m in r["methods"].values() for k in m.get("by_kind", {})})
        lines += [
            "",
            "Flagged / total per kind (models at the shipped threshold, baselines at their best):",
            "",
            "| method | " + " | ".join(kinds) + " |",
            "|---|" + "---|" * len(kinds),
        ]
        for label, m in r["methods"].items():
            bk = m.get("by_kind", {})
            cells = [f"{bk[k]['flagged']}/{bk[k]['total']}" if k in bk else "—" for k in kinds]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "MinHash LSH: datasketch, 128 permutations, character 5-grams of NFKC-casefolded text, LSH band "
        "threshold 0.3 for candidates, then the estimated Jaccard of the best earlier candidate swept as the "
        "threshold. Exact hash: NFKC + casefold + whitespace collapse, then equality. "
        "Models: the score of the "
        "best earlier match from `scan`, swept.",
        "",
        "![precision-recall curves](pr_curves.png)",
    ]
    return lines + provenance(sq)


def _pairs(pq: dict[str, Any]) -> list[str]:
    lines = ["## Pair quality (development sets)", ""]
    sample = f"a seeded sample of {pq['max_pairs']} pairs per set" if pq["max_pairs"] else "all pairs"
    lines += [f"{sample}; metrics from `{pq.get('metrics_from', '?')}`.", ""]
    for name, s in pq["sets"].items():
        lines += [
            f"### {name}: {s['pairs']} pairs, {s['duplicates']} duplicates"
            + (f" ({s['part']})" if s.get("part", "all") != "all" else ""),
            "",
            "| method | ROC-AUC | AP | best F1 (threshold) | R@P0.90 | R@P0.99 | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, m in s["methods"].items():
            lines.append(
                f"| {label} | {fixed(m['roc_auc'])} | {fixed(m['average_precision'])} | "
                f"{fixed(m['best_f1'])} ({fixed(m['best_f1_threshold'])}) | {fixed(m['recall_at_p90'])} | "
                f"{fixed(m['recall_at_p99'])} | {m['seconds']:.1f} |"
            )
        lines.append("")
    lines += [
        "Threshold-free metrics (AUC, AP, recall at precision) do not depend on any shipped threshold; the "
        "fine-tuned model's threshold is calibrated on QQP dev, which also took part in its model selection, "
        "so QQP dev is in-sample for that choice (the held-out tenths in `bench/TRAINING.md` are not). The "
        "default recipe trains on half of QQP dev (by a hash of `text_a`); the QQP rows here are from the "
        "other half. "
        "Baselines: character 5-gram Jaccard of "
        "NFKC-casefolded text, a 128-permutation MinHash estimate of it, TF-IDF cosine over word tokens with "
        "the idf fitted on the pair set's own texts (all in `devkit/baselines.py`).",
        "",
    ]
    for skipped in pq["skipped"]:
        lines.append(f"- skipped: {skipped}")
    return lines + provenance(pq)


def _latency(lt: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency (produce → decision)",
        "",
        f"Offered {lt['offered']} posts at {lt['rate']:.1f} posts/s ({lt.get('rate_basis', '')}); achieved "
        f"{lt['achieved_rate']:.1f}/s offered; {lt['decided']} decided.",
        "",
        "| p50 ms | p95 ms | p99 ms | max ms | mean ms |",
        "|---|---|---|---|---|",
        f"| {lt['p50_ms']:.0f} | {lt['p95_ms']:.0f} | {lt['p99_ms']:.0f} | {lt['max_ms']:.0f} | "
        f"{lt['mean_ms']:.0f} |",
        "",
        "Measured from the producer's `send` to the decision's arrival at a consumer on the same machine; "
        "includes the worker's poll wait (`poll_timeout_ms` 500) for a batch to fill. The offered rate is "
        "half the run's rate at batch 256; but at this load batches are small, and small batches run "
        "slower per document on CPU (see the sweep), so the worker settles where each batch takes about as "
        "long as the posts it holds took to arrive: the latency is then roughly one to two batch times.",
        "",
        "![latency CDF](latency_cdf.png)",
    ]
    return lines + provenance(lt)


def _index_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| points | upsert/s | q/s before opt. | recall@10 before | q/s after | recall@10 after | "
        "recall@10 ef512 | dup@1 | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['points']:,} | {r['upsert_per_s']:,.0f} | {r['before_qps']:,.0f} | "
            f"{fixed(r['before_recall'])} | "
            f"{r['after_qps']:,.0f} | {fixed(r['after_recall'])} | {fixed(r['after_recall_ef512'])} | "
            f"{fixed(r['after_dup_at_1'], 2)} | {r.get('rss_mb', float('nan')):,.0f} |"
        )
    return lines


def _index_provenance(ix: dict[str, Any]) -> list[str]:
    """A run of ``bench.index_scaling`` on its own records its machine in its own, shorter form."""
    m = ix.get("machine", {})
    if "cpu" in m:
        return provenance(ix)
    where = f"{m.get('cpus', '?')} CPUs, {m.get('platform', '?')}, Python {m.get('python', '?')}"
    when = f"; {m['date']}" if "date" in m else ""
    return ["", f"*Command:* `{ix.get('command', '?')}`  ", f"*Machine:* {where}{when}", ""]


def _index(
    ix: dict[str, Any], long_run: dict[str, Any] | None = None, text_run: dict[str, Any] | None = None
) -> list[str]:
    lines = [
        "## Index scaling (Qdrant Edge, `bench/index_scaling.py`)",
        "",
        "### Random unit vectors",
        "",
        *_index_rows(ix["rows"]),
        "",
        "Random unit vectors, dim 384, 4 tenants: recall@10 against exact search on random queries is the "
        "hard case (no structure at all, the worst case for a graph index); `dup@1` — a noisy copy of a "
        "stored point comes back first — is the one that matters for duplicate detection. Below the "
        "full-scan threshold the worker's index searches exactly.",
        *provenance(ix),
    ]
    for title, run in (
        ("Structured vectors (`--data lowrank`)", ix.get("lowrank")),
        ("Structured vectors to 1M points (a separate, longer run)", long_run),
        ("Embeddings of real texts (`--data text`, a separate run: embedding limits its size)", text_run),
    ):
        if run:
            lines += [f"### {title}", "", *_index_rows(run["rows"]), *_index_provenance(run)]
    if ix.get("lowrank") or long_run:
        lines += [
            "Structured vectors: a 32-dimensional latent through a fixed random map to 384 dimensions plus "
            "noise, closer to sentence embeddings, whose neighbourhoods are what HNSW walks along. "
            "recall@10 (ef 128) falls with size while `dup@1` stays near 1: the near-copies a duplicate "
            "detector looks for are still found first; raise `TWINFLAG_INDEX__EF_SEARCH` (512 column) "
            "where the full top-10 must be exact.",
            "",
        ]
    lines += ["![index scaling](index_scaling.png)", ""]
    return lines


def render(results: dict[str, dict[str, Any]], out_dir: Path, top_command: str) -> str:
    lines = [
        "# twinflag benchmark report",
        "",
        "Generated by `python -m bench` (this file is rewritten by every run). Every throughput figure is a "
        "ratio against the encoder alone measured in the same run: the machines are shared and noisy, so "
        "absolute documents/s drift between runs much more than the ratios. Each section names its command "
        "and machine.",
        "",
        f"Report assembled by: `{top_command}`",
        "",
    ]
    missing: list[str] = []
    sections = [
        ("throughput", _throughput, "throughput_batch.png", plot_throughput),
        ("stream_quality", _stream, None, None),
        ("pair_quality", _pairs, None, None),
        ("latency", _latency, None, None),
        (
            "index_scaling",
            lambda ix: _index(ix, results.get("index_scaling_1m_lowrank"), results.get("index_scaling_text")),
            "index_scaling.png",
            lambda ix, png: plot_index(ix, png, results.get("index_scaling_1m_lowrank")),
        ),
        ("speed", speed_section, None, None),
        ("fast_model", fast_model_section, None, None),
        ("pipeline", lambda pl: pipeline_section(pl, results.get("pipeline_before")), None, None),
    ]
    for name, renderer, png, plotter in sections:
        if name not in results:
            how = f"; `python -m bench --only {name}`" if name in ("speed", "fast_model", "pipeline") else ""
            missing.append(f"{name}: not run (no `bench/results/{name}.json`{how})")
            continue
        if plotter and png:
            plotter(results[name], out_dir / png)
        lines += renderer(results[name])
        lines.append("")
    lines += ["## GPU", ""]
    gpu = results.get("gpu")
    if gpu:
        lines += [f"CUDA device: {gpu['device']}", "", *gpu.get("lines", [])]
    else:
        lines.append(
            "no CUDA device on this machine: GPU figures missing. Run `python -m bench` on a machine with "
            "CUDA to fill this section (the encoder and worker use CUDA with autocast when present)."
        )
    lines += ["", "## Missing", ""]
    if "index_scaling" in results:
        missing.append(
            "index scaling on embeddings of real text beyond "
            + (
                f"{results['index_scaling_text']['rows'][-1]['points']:,} points"
                if "index_scaling_text" in results
                else "the synthetic ladders (`--data text`)"
            )
            + ": embedding a million texts takes hours on this CPU"
        )
        if "index_scaling_1m_lowrank" not in results:
            missing.append(
                "index scaling to 1M points (`python -m bench.index_scaling --max-points 1000000 --data "
                "lowrank --out bench/results/index_scaling_1m_lowrank.json`, longer than this benchmark's "
                "30-minute budget)"
            )
    lines += [f"- {m}" for m in missing]
    if "pair_quality" in results and not any(
        "default" in s["methods"] for s in results["pair_quality"]["sets"].values()
    ):
        lines.append(
            "- the fine-tuned `models/default` did not exist when this ran: fine-tuned figures missing"
        )
    if "pair_quality" in results and not any(
        "bilstm" in s["methods"] for s in results["pair_quality"]["sets"].values()
    ):
        lines.append(
            "- a bilstm model variant: `models/bilstm` did not exist when this ran "
            "(`python -m bench.train_quality` trains it), so no pair or stream figures for it"
        )
    return "\n".join(lines) + "\n"


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(results_dir.glob("*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out

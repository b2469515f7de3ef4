"""The report's speed sections (``python -m bench --only speed fast_model pipeline``), rendered by
``bench.report.render``. Each renders whatever its result file holds, so an older file, or one from a
run that skipped a part, still renders."""

from __future__ import annotations

from typing import Any

from bench.report_format import fixed, provenance


def _n(x: Any, digits: int = 0) -> str:
    return "—" if x is None else f"{float(x):,.{digits}f}"


def _x(x: Any, digits: int = 2) -> str:
    return "—" if x is None else f"{float(x):.{digits}f}×"


Target = tuple[str, str, str, bool | str | None]
"""(target, this run's figure, what it is compared against, met? — or why it cannot say)."""


def _targets(rows: list[Target]) -> list[str]:
    lines = ["| target | this run | compared against | verdict |", "|---|---|---|---|"]
    for target, measured, against, ok in rows:
        if isinstance(ok, str):
            verdict = ok
        else:
            verdict = "not measured" if ok is None else ("**meets**" if ok else "**misses**")
        lines.append(f"| {target} | {measured} | {against} | {verdict} |")
    return lines


def _took(section: dict[str, Any]) -> str:
    wall = section.get("wall_s")
    return f" This section took {float(wall) / 60:.1f} minutes." if wall is not None else ""


def speed_section(sp: dict[str, Any]) -> list[str]:
    """The int8 encoder against float32 (``bench/results/speed.json``)."""
    rates = sp.get("encoder texts/s") or {}
    vs = sp.get("encoder speed vs float32") or {}
    scans = sp.get("scan posts/s") or {}
    startup = sp.get("startup s") or {}
    lines = [
        "## Speed: the int8 encoder against float32 (`bench/speed.py`)",
        "",
        f"Model `{sp.get('model', '?')}` and its int8 copy `{sp.get('int8 model', '?')}` (ONNX Runtime), "
        f"{sp.get('posts', '?')} generated posts, batch {sp.get('batch', '?')}. *Texts/s*: each encoder "
        f"alone, each in a process of its own, {sp.get('rounds', '?')} alternating rounds, the median; "
        "*vs float32* divides by float32's texts/s from the same rounds. *`worker scan`*: the whole batch "
        "step in process on the same posts. *Start-up*: `python -m worker scan` on one post, process start "
        f"to exit, the median of three.{_took(sp)}",
        "",
        "| encoder | texts/s alone | vs float32 | `worker scan` posts/s | start-up s |",
        "|---|---|---|---|---|",
    ]
    for name, rate in rates.items():
        ratio = _x(vs.get(name))
        lines.append(
            f"| {name} | {_n(rate, 1)} | {f'**{ratio}**' if name == 'int8' else ratio} | "
            f"{_n(scans.get(name), 1)} | {fixed(startup.get(name), 2)} |"
        )
    ap = sp.get("ap") or []
    if ap:
        lines += [
            "",
            "Average precision of float32 and int8 on pairs no default model trained on; `trainer quantize` "
            "refuses an int8 copy whose AP drops by more than 0.005 on a gated set:",
            "",
            "| pair set | pairs | AP float32 | AP int8 | drop | gated |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.get('set', '?')} | {r.get('pairs', '?')} | {fixed(r.get('float32'), 4)} | "
            f"{fixed(r.get('int8'), 4)} | {fixed(r.get('drop'), 4)} | "
            f"{'yes' if r.get('gated', True) else 'no (reported only)'} |"
            for r in ap
        ]
    speedup = vs.get("int8")
    gated = [float(r["drop"]) for r in ap if r.get("gated", True) and r.get("drop") is not None]
    worst = max(gated) if gated else None
    lines += [
        "",
        *_targets(
            [
                (
                    "int8 ≥ 2× float32's texts/s",
                    _x(speedup),
                    "float32 texts/s, same rounds",
                    None if speedup is None else speedup >= 2.0,
                ),
                (
                    "int8's AP within 0.005 of float32's",
                    f"largest drop {fixed(worst, 4)}" + (f" on {len(gated)} gated sets" if gated else ""),
                    "float32's AP, same pairs",
                    None if worst is None else worst <= 0.005,
                ),
            ]
        ),
    ]
    gpu = sp.get("gpu") or {}
    if gpu.get("device"):
        lines += [
            "",
            f"On {gpu['device']}: encoder texts/s "
            + ", ".join(f"{k} {_n(v, 1)}" for k, v in (gpu.get("encoder texts/s") or {}).items())
            + f"; `worker scan` {_n(gpu.get('scan posts/s'), 1)} posts/s.",
        ]
    else:
        lines += ["", "No CUDA device in this run: CPU figures only."]
    return lines + provenance(sp)


def _fast_speed(sp: dict[str, Any]) -> tuple[list[str], Target]:
    fast, minhash = sp.get("fast_scan_posts_per_s"), sp.get("minhash_lsh_posts_per_s")

    def vs(x: Any) -> str:
        return _x(float(x) / float(minhash)) if x is not None and minhash else "—"

    runs = len((sp.get("all_runs") or {}).get("fast") or [])
    best = "one run each" if runs == 1 else f"the best of {runs or '?'} runs each"
    wall = sp.get("cli_scan_wall_s")
    lines = [
        "",
        f"Speed on {_n(sp.get('posts'))} generated posts (`{sp.get('stream', '?')}`), batch "
        f"{sp.get('batch_size', '?')}: `worker scan` (the CLI's scan in process: the batch step, queries and "
        "inserts into a fresh Qdrant Edge index) against MinHash LSH (datasketch: query the tenant's earlier "
        f"posts, then insert), alternated, {best}:",
        "",
        "| path | posts/s | vs MinHash LSH |",
        "|---|---|---|",
        f"| fast model through `worker scan` | {_n(fast)} | **{vs(fast)}** |",
        f"| MinHash LSH, query + insert | {_n(minhash)} | {vs(minhash)} |",
    ]
    if sp.get("fast_embed_texts_per_s") is not None:
        embed = sp["fast_embed_texts_per_s"]
        lines.append(f"| fast model, embedding alone (no index) | {_n(embed)} | {vs(embed)} |")
    if wall is not None:
        rate = sp.get("cli_scan_posts_per_s_with_start")
        lines.append(
            "| `python -m worker scan` as a user runs it, start and model load included "
            f"({float(wall):.1f} s) | {_n(rate)} | {vs(rate)} |"
        )
    ratio = float(fast) / float(minhash) if fast is not None and minhash else None
    target = (
        "fast model ≥ MinHash LSH's posts/s through `worker scan`",
        _x(ratio),
        "MinHash LSH posts/s, same posts, same run",
        None if ratio is None else ratio >= 1.0,
    )
    return lines, target


def _fast_streams(summary: list[dict[str, Any]]) -> tuple[list[str], Target]:
    suffix = "_shipped_f1"
    models = [k[: -len(suffix)] for k in summary[0] if k.endswith(suffix)]
    calibrated = all("minhash_calibrated_f1" in r for r in summary)
    lines = [
        "",
        "Stream F1 (`worker scan`): each model at its shipped threshold; MinHash LSH at the threshold with "
        "its best F1 on the generated seed-3 stream the fast model is calibrated on, held fixed, and at its "
        "best threshold in hindsight per stream (its most favourable setting):",
        "",
        "| stream | posts | "
        + " | ".join(models)
        + " | MinHash LSH, threshold from seed 3 | MinHash LSH, best in hindsight |",
        "|---|---|" + "---|" * (len(models) + 2),
    ]
    for r in summary:
        cal = r.get("minhash_calibrated_f1")
        cal_cell = (
            f"{fixed(cal)} ({fixed(r.get('minhash_calibrated_threshold'))})" if cal is not None else "—"
        )
        lines.append(
            f"| {r.get('stream', '?')} | {r.get('posts', '?')} | "
            + " | ".join(fixed(r.get(m + suffix)) for m in models)
            + f" | {cal_cell} | {fixed(r.get('minhash_best_f1'))} "
            f"({fixed(r.get('minhash_best_threshold'))}) |"
        )
    key = "minhash_calibrated_f1" if calibrated else "minhash_best_f1"
    pairs: list[tuple[Any, Any]] = [(r.get("fast" + suffix), r.get(key)) for r in summary]
    ok = None if any(a is None or b is None for a, b in pairs) else all(a > b for a, b in pairs)
    target = (
        "fast model's F1 above MinHash LSH's on every stream",
        ", ".join(f"{fixed(a)} vs {fixed(b)}" for a, b in pairs),
        "MinHash LSH "
        + ("at its threshold from seed 3" if calibrated else "at its best threshold in hindsight"),
        ok,
    )
    return lines, target


def _fast_pairs(pq: dict[str, Any]) -> tuple[list[str], Target]:
    ap: dict[str, dict[str, float]] = pq.get("average_precision") or {}
    sets = pq.get("sets") or {}
    methods = list(ap)
    names = list(sets) or list(ap.get("fast", {}))
    jaccard, fast = ap.get("char-3gram-jaccard", {}), ap.get("fast", {})
    lines = [
        "",
        "Average precision on the pairs nobody trained on (a fixed sample per set):",
        "",
        "| pair set | pairs (duplicates) | " + " | ".join(methods) + " | fast − Jaccard |",
        "|---|---|" + "---|" * (len(methods) + 1),
    ]
    for name in names:
        size = sets.get(name, {})
        gap = fast[name] - jaccard[name] if name in fast and name in jaccard else None
        lines.append(
            f"| {name} | {size.get('pairs', '?')} ({size.get('duplicates', '?')}) | "
            + " | ".join(fixed(ap[m].get(name)) for m in methods)
            + f" | {'—' if gap is None else f'{gap:+.3f}'} |"
        )
    compared = [n for n in names if n in fast and n in jaccard]
    short = [n for n in compared if fast[n] <= jaccard[n]]
    target = (
        "fast model's AP above character-3-gram Jaccard's on every pair set",
        (f"below or level on {', '.join(short)}" if short else f"above on all {len(compared)}")
        if compared
        else "—",
        "char-3-gram Jaccard, same pairs",
        None if not compared else not short,
    )
    return lines, target


def fast_model_section(fm: dict[str, Any]) -> list[str]:
    """The fast model against MinHash LSH and Jaccard (``bench/results/fast_model.json``)."""
    man = fm.get("manifest") or {}
    threshold = (man.get("thresholds") or {}).get("decision")
    lines = [
        "## Fast model against MinHash LSH and Jaccard (`bench/fast_model.py`)",
        "",
        f"`models/fast` ({man.get('version', '?')}, {man.get('dim', '?')} dimensions, shipped threshold "
        f"{fixed(threshold)}): the static encoder distilled from the transformer (`make fast`).{_took(fm)}",
    ]
    targets: list[Target] = []
    for part, renderer in (
        (fm.get("speed"), _fast_speed),
        ((fm.get("streams") or {}).get("summary"), _fast_streams),
        (fm.get("pairs"), _fast_pairs),
    ):
        if part:
            more, target = renderer(part)
            lines += more
            targets.append(target)
    lines += ["", *_targets(targets)] if targets else ["", "No speed, stream or pair figures in this file."]
    return lines + provenance(fm)


def pipeline_section(pl: dict[str, Any], before: dict[str, Any] | None = None) -> list[str]:
    """The pipeline's own cost with a near-free encoder (``bench/results/pipeline.json``). ``before``
    (``pipeline_before.json``, an earlier tree's run) is shown beside this run when it preloaded as many
    points."""
    points = pl.get("points")
    if before is not None and before.get("points") != points:
        before = None
    at = f"{_n(points)} points"
    raw = pl.get("raw") or {}
    ref = raw.get("edge_search_queries_per_s")
    floor = pl.get("float_index") or {}
    run = pl.get("run") or {}

    def of(x: Any, against: Any = ref) -> str:
        return fixed(float(x) / float(against), 2) if x is not None and against else "—"

    rows: list[tuple[str, Any, str, str]] = [  # (path, posts/s, vs raw, key in the before file)
        (
            "`worker scan`, no index (`NullIndex`)",
            pl.get("scan_null_posts_per_s"),
            "—",
            "scan_null_posts_per_s",
        ),
        ("`worker scan`, empty Edge index", pl.get("scan_empty_posts_per_s"), "—", "scan_empty_posts_per_s"),
        (
            f"`worker scan`, {at}" + (", scalar quantisation (the default)" if floor else ""),
            pl.get("scan_posts_per_s"),
            of(pl.get("scan_posts_per_s")),
            "scan_posts_per_s",
        ),
    ]
    if floor:
        float_raw = (floor.get("raw") or {}).get("edge_search_queries_per_s")
        float_scan = floor.get("scan_posts_per_s")
        rows.append(
            (
                f"`worker scan`, {at}, no quantisation (vs its own raw search)",
                float_scan,
                of(float_scan, float_raw),
                "",
            )
        )
    if run:
        rows.append(
            (f"`worker run` through Tansu, {at}", run.get("docs_per_s"), of(run.get("docs_per_s")), "run")
        )
    rows += [
        (
            f"raw Qdrant Edge batched query at {at}, bare (no filter, no payload)",
            raw.get("bare_queries_per_s"),
            of(raw.get("bare_queries_per_s")),
            "raw.bare_queries_per_s",
        ),
        (
            "raw Qdrant Edge, as `EdgeIndex.search` builds it (filter, payload)",
            ref,
            of(ref),
            "raw.edge_search_queries_per_s",
        ),
        (
            "raw Qdrant Edge with the stream's unindexed tail",
            raw.get("edge_search_with_tail_queries_per_s"),
            of(raw.get("edge_search_with_tail_queries_per_s")),
            "raw.edge_search_with_tail_queries_per_s",
        ),
    ]

    def earlier(key: str) -> Any:
        if before is None or not key:
            return None
        if key == "run":
            return (before.get("run") or {}).get("docs_per_s")
        if key.startswith("raw."):
            return (before.get("raw") or {}).get(key[4:])
        return before.get(key)

    head = "| path | posts/s (queries/s for raw) | vs raw Edge search |"
    lines = [
        "## Pipeline cost with a near-free encoder (`bench/pipeline.py`)",
        "",
        f"The near-free encoder gives each distinct text a random unit vector "
        f"({_n(pl.get('free_encoder_texts_per_s'))} texts/s), which leaves the pipeline's own cost: "
        f"{_n(pl.get('n'))} generated posts, batch {pl.get('batch', '?')}, an Edge index preloaded with "
        f"{_n(points)} random unit vectors (HNSW built: the hardest geometry for HNSW, so these are a "
        "floor), a fresh copy for each measurement. *vs raw Edge search* divides by Qdrant Edge's own "
        "batched query at the same index as `EdgeIndex.search` builds it, measured in the same run."
        + _took(pl),
        "",
        head + (" before |" if before else ""),
        "|---|---|---|" + ("---|" if before else ""),
    ]
    for path, rate, ratio, key in rows:
        if rate is None:
            continue
        lines.append(f"| {path} | {_n(rate)} | {ratio} |" + (f" {_n(earlier(key))} |" if before else ""))
    if before:
        load = (before.get("machine") or {}).get("load_avg_1m_at_start")
        lines += [
            "",
            f"*before* is `bench/results/pipeline_before.json` (load average {fixed(load, 2)} at its start, "
            f"{fixed((pl.get('machine') or {}).get('load_avg_1m_at_start'), 2)} at this run's): "
            + (before.get("note") or "an earlier run"),
        ]
    mean_ms = run.get("mean_ms") or {}
    if mean_ms.get("total") and "search" in mean_ms:
        lines += [
            "",
            f"In `worker run` the index search takes {100 * mean_ms['search'] / mean_ms['total']:.0f}% of a "
            f"batch ({mean_ms['search']:.0f} of {mean_ms['total']:.0f} ms on average over "
            f"{run.get('batches', '?')} batches).",
        ]
    model = pl.get("model") or {}
    model_ratio = model.get("run_vs_encoder")
    if model:
        enc: list[Any] = [model.get("encoder_before_texts_per_s"), model.get("encoder_after_texts_per_s")]
        mean = (enc[0] + enc[1]) / 2 if None not in enc else None
        lines += [
            "",
            f"With the real model (`{model.get('model', '?')}`, {_n(model.get('n'))} posts, batch "
            f"{model.get('batch', '?')}): `worker run` {_n((model.get('run') or {}).get('docs_per_s'), 1)} "
            f"posts/s against the encoder alone {_n(mean, 1)} texts/s (the mean of {_n(enc[0], 1)} before "
            f"and {_n(enc[1], 1)} after the run): **{_x(model_ratio, 3)}**.",
        ]
    not_100k = "" if points in (100_000, None) else f" (this run: {at})"
    not_comparable = "not comparable: the target is at 100k points"
    scan, docs = pl.get("scan_posts_per_s"), run.get("docs_per_s")
    lines += [
        "",
        *_targets(
            [
                (
                    "`worker scan` ≥ 5,000 posts/s at 100k points, near-free encoder",
                    f"{_n(scan)} posts/s{not_100k}",
                    "the fixed target",
                    None if scan is None else (not_comparable if not_100k else scan >= 5000),
                ),
                (
                    "`worker run` ≥ 3,000 posts/s at 100k points, near-free encoder",
                    f"{_n(docs)} posts/s{not_100k}",
                    "the fixed target",
                    None if docs is None else (not_comparable if not_100k else docs >= 3000),
                ),
                (
                    "real model: `worker run` ≥ 0.90 × the encoder alone",
                    _x(model_ratio, 3),
                    "the encoder alone, same texts and batch, before and after the run",
                    None if model_ratio is None else model_ratio >= 0.90,
                ),
            ]
        ),
    ]
    if pl.get("bound"):
        lines += ["", f"What bounds it: {pl['bound']}."]
    return lines + provenance(pl)

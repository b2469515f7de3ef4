"""Formatting shared by the report's sections (``bench.report``, ``bench.report_speed``) and the bench
scripts that write their own Markdown: a number or a dash, and the command and machine lines under a
section. No torch here: ``bench.report.machine`` records what ``describe`` prints."""

from __future__ import annotations

from typing import Any


def describe(m: dict[str, Any]) -> str:
    """One line for a machine recorded by ``bench.report.machine``: CPU, cores, GPU, versions, load, date."""
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    return (
        f"{m['cpu']}, {m['usable_cores']} cores (torch {m['torch_threads']} threads){gpu}; "
        f"torch {m['torch']}; "
        f"Python {m['python']}; load average {m['load_avg_1m_at_start']} at start; {m['date']}"
    )


def fixed(x: Any, digits: int = 3) -> str:
    """``x`` to ``digits`` decimal places, or a dash when it was not measured (``None``)."""
    return "—" if x is None else f"{float(x):.{digits}f}"


def provenance(section: dict[str, Any]) -> list[str]:
    """The command and machine lines under a section; a file written by a bench script run on its own,
    before it recorded its machine, says so instead."""
    m = section.get("machine") or {}
    where = describe(m) if "cpu" in m else "not recorded in this result file"
    return ["", f"*Command:* `{section.get('command', '?').strip()}`  ", f"*Machine:* {where}", ""]

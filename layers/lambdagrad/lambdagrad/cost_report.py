"""The bill of a job as a rich table (``lambdagrad estimate``, ``lambdagrad status``).

Takes the JSON form of :class:`lambdagrad.cost.CostBreakdown` -- what ``estimate`` computes
and what finalize writes to ``cost.json`` -- so both print the same way.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from lambdagrad.pricing import DEFAULT_PRICES

__all__ = ["cost_table", "print_cost"]


def _qty(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _usd(value: float) -> str:
    if value == 0:
        return "$0"
    if abs(value) >= 0.01:
        return f"${value:,.4f}"
    return f"${value:.3g}"


def cost_table(doc: dict[str, Any]) -> Any:
    """A rich Table: one row per billed item, per round and in total."""
    from rich.table import Table

    basis = doc.get("basis", "estimate")
    title = (
        f"AWS cost ({basis}): {doc['rounds']} rounds x {doc['workers']} workers, "
        f"{doc['segments']} segment(s), {doc['orchestration']} orchestration"
        + (", inline gradients" if doc.get("inline_gradients") else "")
    )
    table = Table(title=title, title_justify="left")
    table.add_column("item")
    table.add_column("unit")
    for name in ("per round", "$ per round", "total", "$ total"):  # a number keeps one line
        table.add_column(name, justify="right", no_wrap=True, overflow="ignore")
    for line in doc["lines"]:
        table.add_row(
            line["item"],
            line["unit"],
            _qty(line["per_round"]),
            _usd(line["dollars_per_round"]),
            _qty(line["total"]),
            _usd(line["dollars"]),
        )
    table.add_section()
    table.add_row(
        "[bold]total",
        "USD",
        "",
        f"[bold]{_usd(doc['dollars_per_round'])}",
        "",
        f"[bold]{_usd(doc['dollars'])}",
    )
    return table


def print_cost(doc: dict[str, Any], console: Any = None, *, notes: bool = True) -> None:
    """Print the table, and what it rests on (prices' date, how to override, durations)."""
    from rich.console import Console

    console = console or Console()
    console.print(cost_table(doc))
    if not notes:
        return
    prices = doc.get("prices", {})
    details = doc.get("details", {})
    listed = asdict(DEFAULT_PRICES)
    changed = [
        f"{k}={v:g}"
        for k, v in prices.items()
        if k not in ("as_of", "region") and k in listed and v != listed[k]
    ]
    console.print(
        f"prices: {prices.get('region', '?')} list prices as of {prices.get('as_of', '?')} "
        "(arm64 Lambda, S3 Standard, no free tier)"
        + (f", except {', '.join(changed)} (--price)" if changed else "")
        + "; override with --price lambda_gb_second=0.0000133334 (names: "
        + ", ".join(k for k in prices if k not in ("as_of", "region"))
        + ")"
    )
    for warning in details.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    memory = _memory_text(details)
    if doc.get("basis") == "measured":
        console.print(
            f"Lambda seconds as measured by the handlers at {memory}; transitions and S3 "
            "requests counted by the round structure (lambdagrad.cost)"
        )
    else:
        sec = details.get("seconds", {})
        console.print(
            f"counts are exact for the rounds above; Lambda durations are an estimate at "
            f"{memory}: worker {sec.get('worker', 0):.3g} s, reducer "
            f"{sec.get('reduce', 0):.3g} s, round {sec.get('round', 0):.3g} s "
            "(compute measured on a 2-core dev machine + S3 latency per request; see docs/cost.md)"
        )


def _memory_text(details: dict[str, Any]) -> str:
    """``1769 MB`` when every function has it, else each function's (cost.json written
    before they were recorded has only ``memory_mb``)."""
    by_function = details.get("memory_mb_by_function") or {}
    sizes = set(by_function.values())
    if len(sizes) <= 1:
        return f"{details.get('memory_mb')} MB"
    return ", ".join(f"{step} {mb} MB" for step, mb in by_function.items())

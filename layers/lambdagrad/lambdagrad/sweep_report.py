"""Reports of a sweep's ``result.json`` (:func:`lambdagrad.sweep.select_best`): a text table,
loss curves, an lr × batch-size heat map and a compact JSON summary.

matplotlib is imported lazily (and only for the PNGs): Lambda never needs it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["curves_png", "heatmap_png", "summary_json", "table", "tally"]

_LR, _BATCH = "optimizer.learning_rate", "training.batch_size"
_NOT_SWEPT = "(base)"


def _param_keys(result: Mapping[str, Any]) -> list[str]:
    keys: list[str] = list(result.get("param_names") or [])
    for r in result.get("results", []):
        for k in r.get("params", {}):
            if k not in keys:
                keys.append(k)
    return keys


def _best_index(result: Mapping[str, Any]) -> int | None:
    best = result.get("best")
    return None if best is None else int(best["index"])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def _label(params: Mapping[str, Any]) -> str:
    short = {k.rsplit(".", 1)[-1]: v for k, v in params.items()}
    return " ".join(f"{k}={_fmt(v)}" for k, v in short.items()) or "base"


def table(result: Mapping[str, Any]) -> str:
    """One row per point: params, status, rounds, train and validation loss, error.

    The best point is marked with ``*``; the ranking metric is named in the last line.
    """
    keys = _param_keys(result)
    best = _best_index(result)
    header = ["", "#", *keys, "status", "rounds", "train_loss", "validation_loss", "error"]
    rows = []
    for r in sorted(result.get("results", []), key=lambda r: r["index"]):
        rows.append(
            [
                "*" if r["index"] == best else "",
                str(r["index"]),
                *(_fmt(r.get("params", {}).get(k)) for k in keys),
                r["status"],
                _fmt(r.get("rounds")),
                _fmt(r.get("train_loss")),
                _fmt(r.get("validation_loss")),
                r.get("error") or "",
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {1, len(keys) + 3, len(keys) + 4, len(keys) + 5}

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    lines = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    counts = tally(result)
    if best is None:
        lines.append(f"no point succeeded ({counts})" if counts else "no point succeeded")
    else:
        lines.append(f"* best by {result.get('ranked_by', 'validation_loss')} ({counts})")
    return "\n".join(lines)


def tally(result: Mapping[str, Any]) -> str:
    """How many points ended in each status, e.g. ``"4 succeeded, 2 diverged"``."""
    counts = result.get("counts") or {}
    return ", ".join(f"{n} {status.lower()}" for status, n in counts.items() if n)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def curves_png(result: Mapping[str, Any], title: str = "") -> bytes:
    """Validation loss (the ranking metric) against round, one line per point.

    The y range follows the points that did not diverge (log scale when they span more
    than two decades); diverged points are dashed, cut at the top of the plot, and end
    with an ``x``. The best point is drawn thicker. When every curve diverged, the plot
    shows log10 of the loss (matplotlib's log axis breaks near 1e308).
    """
    plt = _pyplot()
    best = _best_index(result)
    metric = result.get("ranked_by", "validation_loss").replace("_", " ")
    points = [
        r for r in sorted(result.get("results", []), key=lambda r: r["index"]) if r.get("curve")
    ]
    calm = [c[1] for r in points if r["status"] != "DIVERGED" for c in r["curve"]]
    every = [c[1] for r in points for c in r["curve"]]
    scale = calm or every
    log = bool(scale) and min(scale) > 0 and max(scale) / min(scale) > 100
    top = None
    if calm:
        lo, hi = min(calm), max(calm)
        top = hi * 10 if log else hi + 0.25 * (hi - lo or abs(hi) or 1.0)

    def y_of(value: float) -> float:
        if top is not None:
            return min(value, top)
        return math.log10(value) if log else value

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for r in points:
        xs = [c[0] for c in r["curve"]]
        ys = [y_of(c[1]) for c in r["curve"]]
        label = f"{r['index']}: {_label(r.get('params', {}))}"
        if r["status"] != "SUCCEEDED":
            label += f" ({r['status'].lower()})"
        style = "--" if r["status"] == "DIVERGED" else "-"
        (line,) = ax.plot(xs, ys, style, linewidth=2.5 if r["index"] == best else 1.0, label=label)
        if r["status"] == "DIVERGED":
            ax.plot(xs[-1:], ys[-1:], "x", color=line.get_color(), markersize=8, clip_on=False)
    if top is not None:
        if log:
            ax.set_yscale("log")
        ax.set_ylim(top=top)
    ax.set_xlabel("round")
    ax.set_ylabel(f"log10({metric})" if log and top is None else metric)
    ax.set_title(title or f"sweep {result.get('sweep_id', '')}: {metric}")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no curves", ha="center", va="center", transform=ax.transAxes)
    return _png(fig, plt)


def _axis_values(results: list[Mapping[str, Any]], key: str) -> list[Any]:
    values: list[Any] = []
    for r in results:
        v = r.get("params", {}).get(key, _NOT_SWEPT)
        if v not in values:
            values.append(v)

    def order(v: Any) -> tuple[int, float, str]:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return (0, float(v), "")
        return (1, 0.0, str(v))

    return sorted(values, key=order)


def heatmap_png(result: Mapping[str, Any], x: str = _LR, y: str = _BATCH, title: str = "") -> bytes:
    """The final value of the ranking metric over the ``x`` × ``y`` parameters.

    A cell holds the best succeeded point with those two values (other swept parameters
    are minimised over); a cell with only diverged points is hatched and marked
    ``diverged``, only failed points ``failed``. A parameter the sweep did not vary is a
    single ``(base)`` row or column.
    """
    import numpy as np

    plt = _pyplot()
    results = list(result.get("results", []))
    metric = result.get("ranked_by", "validation_loss")
    xs, ys = _axis_values(results, x), _axis_values(results, y)
    grid = np.full((len(ys), len(xs)), np.nan)
    marks: dict[tuple[int, int], str] = {}
    for r in results:
        params = r.get("params", {})
        i, j = ys.index(params.get(y, _NOT_SWEPT)), xs.index(params.get(x, _NOT_SWEPT))
        value = r.get(metric)
        if r["status"] == "SUCCEEDED" and value is not None and math.isfinite(value):
            if np.isnan(grid[i, j]) or value < grid[i, j]:
                grid[i, j] = value
        elif r["status"] == "DIVERGED":
            marks.setdefault((i, j), "diverged")
        else:
            marks[(i, j)] = marks.get((i, j), "failed")

    fig, ax = plt.subplots(
        figsize=(max(4.5, 1.4 * len(xs) + 2.5), max(3.5, 0.8 * len(ys) + 2)), dpi=100
    )
    finite = grid[np.isfinite(grid)]
    norm = None
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        from matplotlib.colors import LogNorm

        norm = LogNorm(vmin=finite.min(), vmax=finite.max())
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap="viridis_r", norm=norm, aspect="auto", origin="lower"
    )
    if finite.size:
        fig.colorbar(image, ax=ax, label=metric.replace("_", " "))
    best = _best_index(result)
    best_cell = None
    if best is not None:
        bp = next(r for r in results if r["index"] == best).get("params", {})
        best_cell = (ys.index(bp.get(y, _NOT_SWEPT)), xs.index(bp.get(x, _NOT_SWEPT)))
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                text = f"{grid[i, j]:.4g}" + (" *" if (i, j) == best_cell else "")
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black",
                    bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0},
                )
            elif (i, j) in marks:
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="tab:red"
                    )
                )
                ax.text(
                    j,
                    i,
                    marks[(i, j)],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="tab:red",
                    bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0},
                )
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"sweep {result.get('sweep_id', '')}: final {metric.replace('_', ' ')}")
    return _png(fig, plt)


def summary_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """``{"best": {"lr", "batch_size", "validation_loss"} | None, "results": [...]}``.

    ``lr`` and ``batch_size`` come from the best point's params (None when the sweep did
    not vary them); ``results`` has one entry per point, without its curve.
    """
    best = result.get("best")
    summary_best = None
    if best is not None:
        params = best.get("params", {})
        summary_best = {
            "lr": params.get(_LR),
            "batch_size": params.get(_BATCH),
            "validation_loss": best.get("validation_loss"),
        }
        if best.get("validation_loss") is None:
            summary_best["train_loss"] = best.get("train_loss")
    fields = (
        "index",
        "job_id",
        "params",
        "status",
        "error",
        "rounds",
        "train_loss",
        "validation_loss",
    )
    results = [
        {k: r.get(k) for k in fields}
        for r in sorted(result.get("results", []), key=lambda r: r["index"])
    ]
    return {"best": summary_best, "results": results}

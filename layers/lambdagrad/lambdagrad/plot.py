"""Loss curves as PNG (matplotlib, imported lazily: Lambda never needs it)."""

from __future__ import annotations

import csv
import io
import math

#: Losses above this are plotted as their base-10 logarithm (a log axis's ticks overflow).
HUGE_LOSS = 1e100


def loss_curve_png(history_csv: bytes, title: str = "") -> bytes:
    """Training and validation loss against round, from history.csv bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(io.StringIO(history_csv.decode())))
    rounds = [int(r["round"]) for r in rows]
    train = [float(r["train_loss"]) for r in rows]
    val = [(int(r["round"]), float(r["validation_loss"])) for r in rows if r["validation_loss"]]
    values = train + [v for _, v in val]
    # a diverged job's losses (1e270) overflow a log axis's ticks: plot their logarithm
    logged = bool(values) and min(values) > 0 and max(values) > HUGE_LOSS
    if logged:
        train = [math.log10(v) for v in train]
        val = [(r, math.log10(v)) for r, v in val]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(rounds, train, label="train (mini-batch)", linewidth=1)
    if val:
        ax.plot([r for r, _ in val], [v for _, v in val], label="validation", linewidth=1.5)
    ax.set_xlabel("round")
    ax.set_ylabel("log10(loss)" if logged else "loss")
    if not logged and train and min(train) > 0 and max(train) / min(train) > 100:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

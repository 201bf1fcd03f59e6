"""Loss curves as PNG (matplotlib, imported lazily: Lambda never needs it)."""

from __future__ import annotations

import csv
import io


def loss_curve_png(history_csv: bytes, title: str = "") -> bytes:
    """Training and validation loss against round, from history.csv bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(io.StringIO(history_csv.decode())))
    rounds = [int(r["round"]) for r in rows]
    train = [float(r["train_loss"]) for r in rows]
    val = [(int(r["round"]), float(r["validation_loss"])) for r in rows if r["validation_loss"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(rounds, train, label="train (mini-batch)", linewidth=1)
    if val:
        ax.plot([r for r, _ in val], [v for _, v in val], label="validation", linewidth=1.5)
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    if train and min(train) > 0 and max(train) / min(train) > 100:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

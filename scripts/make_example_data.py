"""Regenerate the example datasets in events/data/ (deterministic).

houses.csv: a synthetic regression set (price from size, rooms, age, distance, with noise).
iris.csv:   Fisher's iris measurements (as shipped with scikit-learn), for softmax.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "events" / "data"


def houses(n: int = 2000, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    sqft = rng.normal(1500, 450, n).clip(400, 4000).round()
    bedrooms = np.clip(np.round(sqft / 550 + rng.normal(0, 0.7, n)), 1, 6)
    age = rng.uniform(0, 80, n).round(1)
    distance = rng.gamma(2.0, 4.0, n).round(2)
    price = 52_000 + 180 * sqft + 9_000 * bedrooms - 650 * age - 3_100 * distance
    price = (price + rng.normal(0, 18_000, n)).round(-2)
    with open(OUT / "houses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sqft", "bedrooms", "age", "distance_km", "price"])
        for row in zip(sqft, bedrooms, age, distance, price, strict=True):
            w.writerow([f"{v:g}" for v in row])


def iris() -> None:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    with open(OUT / "iris.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, "species"])
        for x, t in zip(bunch.data, bunch.target, strict=True):
            w.writerow([*(f"{v:g}" for v in x), bunch.target_names[t]])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    houses()
    iris()

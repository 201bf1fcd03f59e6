"""The loss curve is drawn for any history a job can write."""

from __future__ import annotations

import pytest
from lambdagrad.plot import loss_curve_png

PNG = b"\x89PNG\r\n\x1a\n"


def history(train, validation=None) -> bytes:
    validation = validation or [None] * len(train)
    rows = "".join(
        f"{i},{t},{'' if v is None else v},0.1\n"
        for i, (t, v) in enumerate(zip(train, validation, strict=True))
    )
    return ("round,train_loss,validation_loss,seconds\n" + rows).encode()


@pytest.mark.parametrize(
    "train",
    [
        [1.0, 0.5, 0.25],  # linear axis
        [1000.0, 1.0, 0.001],  # log axis
        [1.1, 3.5e261, 1.8e266, 5.1e270],  # diverged: a log axis's ticks overflowed
        [0.0, 0.0],  # a perfect fit
        [],
    ],
)
def test_the_curve_is_drawn(train):
    assert loss_curve_png(history(train, [t * 10 for t in train])).startswith(PNG)

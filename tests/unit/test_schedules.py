"""Learning-rate schedules: values at chosen steps, warm-up, JSON description, resume."""

import io
import itertools
import json
import math

import numpy as np
import pytest
from lambdagrad.optim import (
    OptimizerError,
    apply_updates,
    constant,
    cosine,
    exponential,
    inverse_time,
    make_optimizer,
    make_schedule,
    sgd,
    step_decay,
    warmup,
)


def test_constant():
    s = constant(0.3)
    assert [s(0), s(1), s(10**9)] == [0.3, 0.3, 0.3]
    assert make_schedule("constant", 0.3)(77) == 0.3


def test_step_decay_boundaries():
    # lr * gamma ** (t // step_size) with lr = 1, step_size = 10, gamma = 0.5
    s = step_decay(1.0, 10, gamma=0.5)
    assert [s(0), s(9), s(10), s(19), s(20), s(35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    assert step_decay(0.2, 3)(3) == pytest.approx(0.02)  # gamma defaults to 0.1
    assert make_schedule("step", 0.2, step_size=3)(6) == pytest.approx(0.002)


def test_exponential():
    # lr * gamma ** t
    s = exponential(2.0, 0.5)
    assert [s(0), s(1), s(2), s(5)] == [2.0, 1.0, 0.5, 0.0625]
    assert exponential(1.0, 0.99)(100) == pytest.approx(0.99**100, rel=1e-15)
    assert exponential(1.0, 0.5)(100_000) == 0.0  # underflows quietly


def test_inverse_time():
    # lr / (1 + decay * t)
    s = inverse_time(0.6, 0.5)
    assert [s(0), s(1), s(2), s(4)] == pytest.approx([0.6, 0.4, 0.3, 0.2], rel=1e-15)
    assert inverse_time(0.6, 0.0)(1000) == 0.6


def test_cosine_endpoints_and_midpoint():
    # final + (lr - final) * (1 + cos(pi t / T)) / 2, then final
    s = cosine(1.0, 100, final_lr=0.1)
    assert s(0) == 1.0  # exactly
    assert s(100) == 0.1  # exactly
    assert s(101) == 0.1 and s(10**6) == 0.1
    assert s(50) == pytest.approx(0.55, rel=1e-15)
    assert s(25) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-15)
    values = [s(t) for t in range(102)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert cosine(0.5, 10)(10) == 0.0  # final_lr defaults to 0


def test_warmup_then_continuation():
    inner = step_decay(0.8, 5, gamma=0.5)
    s = warmup(inner, 4)
    # t < 4: inner(0) * (t + 1) / 4
    assert [s(t) for t in range(4)] == [0.2, 0.4, 0.6000000000000001, 0.8]
    # t >= 4: inner(t - 4), so the step decay starts counting after the warm-up
    assert [s(t) for t in range(4, 15)] == [inner(k) for k in range(11)]
    assert s(9) == 0.4  # inner(5), the first decay
    assert warmup(inner, 0) is inner


def test_warmup_in_front_of_any_callable():
    s = warmup(lambda t: 1.0 / (t + 1), 2)
    assert [s(0), s(1), s(2), s(3)] == [0.5, 1.0, 1.0, 0.5]
    assert s.config is None  # a custom function has no JSON description


def test_make_schedule_cosine_total_steps_counts_after_the_warmup():
    # warmup(cosine(1.0, 100, final_lr=0.2), 10): the cosine starts at t = 10, ends at t = 110.
    s = make_schedule("cosine", 1.0, warmup=10, total_steps=100, final_lr=0.2)
    assert s(0) == pytest.approx(0.1) and s(9) == 1.0
    assert s(10) == 1.0  # cosine(0)
    assert s(60) == pytest.approx(0.6, rel=1e-15)  # cosine midpoint
    assert s(110) == 0.2 and s(500) == 0.2
    assert s(109) > 0.2
    direct = warmup(cosine(1.0, 100, final_lr=0.2), 10)
    assert [s(t) for t in range(120)] == [direct(t) for t in range(120)]
    # A warm-up longer than the run is fine; a cosine may also end above where it starts.
    assert make_schedule("cosine", 0.1, warmup=50, total_steps=1)(49) == pytest.approx(0.1)
    assert cosine(0.1, 10, final_lr=0.3)(10) == 0.3


def test_make_schedule_matches_builders_and_ignores_total_steps_elsewhere():
    pairs = [
        (make_schedule("step", 0.5, step_size=7, gamma=0.3), step_decay(0.5, 7, 0.3)),
        (make_schedule("exponential", 0.5, gamma=0.97), exponential(0.5, 0.97)),
        (make_schedule("inverse_time", 0.5, decay=0.01), inverse_time(0.5, 0.01)),
        (make_schedule("exponential", 0.5, gamma=0.9, total_steps=3), exponential(0.5, 0.9)),
    ]
    for made, direct in pairs:
        assert [made(t) for t in range(50)] == [direct(t) for t in range(50)]


@pytest.mark.parametrize(
    "args",
    [
        ("constant", 0.1, {}),
        ("step", 0.1, {"warmup": 3, "step_size": 4, "gamma": 0.5}),
        ("exponential", 0.1, {"gamma": 0.9}),
        ("inverse_time", 0.1, {"warmup": 2, "decay": 0.1}),
        ("cosine", 0.1, {"warmup": 5, "total_steps": 25, "final_lr": 0.01}),
    ],
)
def test_config_is_json_and_rebuilds_the_schedule(args):
    name, lr, kwargs = args
    s = make_schedule(name, lr, **kwargs)
    config = json.loads(json.dumps(s.config))
    assert config["name"] == name and config["learning_rate"] == lr
    assert config["warmup"] == kwargs.get("warmup", 0)
    rebuilt = make_schedule(**config)
    assert [rebuilt(t) for t in range(40)] == [s(t) for t in range(40)]


def test_schedule_is_pure_so_a_restart_continues_exactly():
    def build():
        return make_schedule("cosine", 0.05, warmup=3, total_steps=17, final_lr=0.001)

    first = build()
    straight = [first(t) for t in range(25)]
    # Asking out of order, repeatedly, or from a fresh object changes nothing.
    restarted = build()
    assert [restarted(t) for t in range(11, 25)] == straight[11:]
    assert [first(t) for t in reversed(range(25))] == straight[::-1]
    assert restarted(np.int64(7)) == straight[7]


def test_optimizer_uses_schedule_of_step_before_update_across_a_checkpoint():
    # sgd with g = 1: each update is -schedule(t) for t = 0, 1, 2, ...
    def build():
        return sgd(make_schedule("step", 1.0, warmup=2, step_size=2, gamma=0.5))

    expected = [0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    opt = build()
    params, state, seen = np.zeros(1), opt.init(np.zeros(1)), []
    for t in range(8):
        if t == 5:  # checkpoint, then continue in "another process"
            buf = io.BytesIO()
            np.savez(buf, **state)
            buf.seek(0)
            with np.load(buf, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
            opt = build()
        updates, state = opt.update(np.ones(1), state, params)
        params = apply_updates(params, updates)
        seen.append(-float(updates[0]))
    assert seen == expected
    assert params[0] == -sum(expected)


def test_schedules_work_inside_make_optimizer():
    s = make_schedule("exponential", 0.1, gamma=0.5)
    opt = make_optimizer("momentum", s, beta=0.0)
    params = np.zeros(1)
    state = opt.init(params)
    u0, state = opt.update(np.ones(1), state, params)
    u1, state = opt.update(np.ones(1), state, params)
    assert (u0[0], u1[0]) == (-0.1, -0.05)


@pytest.mark.parametrize(
    ("name", "lr", "kwargs", "bad"),
    [
        ("linear", 0.1, {}, "choose one of constant, cosine, exponential, inverse_time, step"),
        ("constant", 0.0, {}, "learning_rate"),
        ("constant", float("inf"), {}, "learning_rate"),
        ("constant", 0.1, {"gamma": 0.5}, "'gamma'"),
        ("step", 0.1, {}, "step_size"),
        ("step", 0.1, {"step_size": 0}, "step_size"),
        ("step", 0.1, {"step_size": 2.5}, "step_size"),
        ("step", 0.1, {"step_size": 2, "gamma": 0.0}, "gamma"),
        ("step", 0.1, {"step_size": 2, "decay": 0.5}, "'decay'"),
        ("exponential", 0.1, {}, "gamma"),
        ("exponential", 0.1, {"gamma": 1.5}, "gamma"),
        ("inverse_time", 0.1, {}, "decay"),
        ("inverse_time", 0.1, {"decay": -1.0}, "decay"),
        ("cosine", 0.1, {}, "total_steps"),
        ("cosine", 0.1, {"total_steps": 0}, "total_steps"),
        ("cosine", 0.1, {"total_steps": 2.5}, "total_steps"),
        ("cosine", 0.1, {"total_steps": 10, "final_lr": -0.1}, "final_lr"),
        ("constant", 0.1, {"warmup": -1}, "warmup"),
        ("constant", 0.1, {"warmup": "3"}, "warmup"),
    ],
)
def test_make_schedule_errors_name_the_parameter(name, lr, kwargs, bad):
    with pytest.raises(OptimizerError, match=bad):
        make_schedule(name, lr, **kwargs)


def test_schedule_rejects_bad_steps():
    s = exponential(0.1, 0.5)
    with pytest.raises(OptimizerError, match="step"):
        s(-1)
    with pytest.raises(OptimizerError, match="step"):
        s(1.5)

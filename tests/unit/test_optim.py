"""Optimizers: steps against hand computation, explicit state, purity."""

import numpy as np
import pytest
from lambdagrad.optim import (
    OptimizerError,
    adam,
    apply_updates,
    chain,
    constant,
    make_optimizer,
    momentum,
    sgd,
)


def _run(opt, params, grads_seq):
    state = opt.init(params)
    out = []
    for g in grads_seq:
        updates, state = opt.update(g, state, params)
        params = apply_updates(params, updates)
        out.append(params)
    return out, state


def test_sgd_by_hand():
    p0 = np.array([1.0, -1.0])
    (p1, p2), state = _run(sgd(0.1), p0, [np.array([2.0, 4.0]), np.array([-1.0, 0.5])])
    np.testing.assert_allclose(p1, [0.8, -1.4])
    np.testing.assert_allclose(p2, [0.9, -1.45])
    assert int(state["step"]) == 2


def test_schedule_sees_step_before_update():
    seen = []

    def schedule(step):
        seen.append(step)
        return 1.0 / (step + 1)

    (p1, p2, p3), _ = _run(sgd(schedule), np.zeros(1), [np.ones(1)] * 3)
    assert seen == [0, 1, 2]
    np.testing.assert_allclose([p1[0], p2[0], p3[0]], [-1.0, -1.5, -1.5 - 1 / 3])
    assert constant(0.3)(12345) == 0.3


def test_momentum_by_hand():
    # v1 = g1 = 1; v2 = 0.5*1 + 2 = 2.5; v3 = 0.5*2.5 - 1 = 0.25; update = -lr * v
    (p1, p2, p3), state = _run(
        momentum(0.1, beta=0.5), np.array([0.0]), [np.array([1.0]), np.array([2.0]), -np.ones(1)]
    )
    np.testing.assert_allclose([p1[0], p2[0], p3[0]], [-0.1, -0.35, -0.375])
    np.testing.assert_allclose(state["velocity"], [0.25])
    assert int(state["step"]) == 3


def test_nesterov_by_hand():
    # v1 = 1, u1 = -(1 + 0.5*1) = -1.5; v2 = 0.5 + 2 = 2.5, u2 = -(2 + 1.25) = -3.25
    (p1, p2), _ = _run(
        momentum(1.0, beta=0.5, nesterov=True), np.zeros(1), [np.ones(1), np.array([2.0])]
    )
    np.testing.assert_allclose([p1[0], p2[0]], [-1.5, -4.75])


def test_adam_first_step_has_magnitude_lr():
    g = np.array([1e-3, -5.0, 300.0, 2.0])
    (p1,), state = _run(adam(0.01), np.zeros(4), [g])
    np.testing.assert_allclose(p1, -0.01 * np.sign(g), rtol=1e-5)
    assert set(state) == {"step", "mu", "nu"}


def test_adam_by_hand_two_steps():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
    u1 = -lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
    u2 = -lr * (m2 / (1 - b1**2)) / (np.sqrt(v2 / (1 - b2**2)) + eps)
    (p1, p2), state = _run(adam(lr, b1, b2, eps), np.zeros(2), [g1, g2])
    np.testing.assert_allclose(p1, u1, rtol=1e-12)
    np.testing.assert_allclose(p2, u1 + u2, rtol=1e-12)
    np.testing.assert_allclose(state["mu"], m2)
    np.testing.assert_allclose(state["nu"], v2)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_state_is_dict_of_arrays_and_npz_roundtrips(name, tmp_path):
    opt = make_optimizer(name, 0.1)
    params = np.arange(3.0)
    state = opt.init(params)
    assert isinstance(state, dict)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["step"].dtype == np.int64 and state["step"].shape == ()
    assert int(state["step"]) == 0
    _, state = opt.update(np.ones(3), state, params)
    np.savez(tmp_path / "s.npz", **state)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    u_a, _ = opt.update(np.ones(3), state, params)
    u_b, s_b = opt.update(np.ones(3), loaded, params)
    np.testing.assert_array_equal(u_a, u_b)
    assert int(s_b["step"]) == 2


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_inputs_not_mutated(name):
    opt = make_optimizer(name, 0.1)
    params, grads = np.arange(3.0), np.array([1.0, -1.0, 2.0])
    state = opt.update(grads, opt.init(params), params)[1]
    copies = (params.copy(), grads.copy(), {k: v.copy() for k, v in state.items()})
    updates, new_state = opt.update(grads, state, params)
    new_params = apply_updates(params, updates)
    np.testing.assert_array_equal(params, copies[0])
    np.testing.assert_array_equal(grads, copies[1])
    for k, v in state.items():
        np.testing.assert_array_equal(v, copies[2][k])
    assert new_params is not params
    assert all(new_state[k] is not state[k] for k in state)


def test_make_optimizer_passes_hyper_parameters():
    (p1,), _ = _run(make_optimizer("momentum", 1.0, beta=0.0), np.zeros(1), [np.ones(1)])
    assert p1[0] == -1.0


@pytest.mark.parametrize(
    ("name", "lr", "hyper"),
    [
        ("rmsprop", 0.1, {}),
        ("sgd", 0.1, {"beta": 0.9}),
        ("adam", -1.0, {}),
        ("momentum", 0.1, {"beta": 1.5}),
    ],
)
def test_make_optimizer_errors(name, lr, hyper):
    with pytest.raises(OptimizerError):
        make_optimizer(name, lr, **hyper)


def test_chain_keeps_flat_state():
    opt = chain(sgd(0.5), momentum(1.0, beta=0.0))
    state = opt.init(np.zeros(2))
    assert set(state) == {"step", "0/step", "1/step", "1/velocity"}
    updates, state = opt.update(np.array([2.0, -2.0]), state, np.zeros(2))
    # sgd gives -1, +1; momentum(lr=1, beta=0) negates again.
    np.testing.assert_allclose(updates, [1.0, -1.0])
    assert int(state["step"]) == 1 and int(state["1/step"]) == 1

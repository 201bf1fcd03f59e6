"""Optimizers: steps against hand computation, explicit state, purity."""

import io
import math

import numpy as np
import pytest
from lambdagrad.optim import (
    OptimizerError,
    adagrad,
    adam,
    adamw,
    apply_updates,
    chain,
    clip_by_global_norm,
    constant,
    make_optimizer,
    make_schedule,
    momentum,
    nesterov,
    rmsprop,
    sgd,
)

ALL_NAMES = ["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"]


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


@pytest.mark.parametrize("name", ALL_NAMES)
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


@pytest.mark.parametrize("name", [*ALL_NAMES, "clipped"])
def test_inputs_not_mutated(name):
    if name == "clipped":
        opt = make_optimizer("adamw", 0.1, clip_norm=0.5, mask=np.array([True, False, True]))
    else:
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
        ("lbfgs", 0.1, {}),
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


def _roundtrip(state, tmp_path=None):
    """Through np.savez / np.load(allow_pickle=False), as the reducer does every round."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_nesterov_function_by_hand():
    # v1 = 1, u1 = -0.1 * (1 + 0.5 * 1) = -0.15
    # v2 = 0.5 * 1 + 2 = 2.5, u2 = -0.1 * (2 + 0.5 * 2.5) = -0.325
    # v3 = 0.5 * 2.5 - 1 = 0.25, u3 = -0.1 * (-1 + 0.5 * 0.25) = 0.0875
    grads = [np.array([1.0]), np.array([2.0]), np.array([-1.0])]
    (p1, p2, p3), state = _run(nesterov(0.1, beta=0.5), np.zeros(1), grads)
    np.testing.assert_allclose([p1[0], p2[0], p3[0]], [-0.15, -0.475, -0.3875], rtol=1e-14)
    np.testing.assert_allclose(state["velocity"], [0.25])
    assert set(state) == {"step", "velocity"} and int(state["step"]) == 3
    # The same optimizer as momentum(..., nesterov=True) and make_optimizer's "nesterov";
    # plain momentum differs from step 1 (-0.1 instead of -0.15).
    for same in (momentum(0.1, beta=0.5, nesterov=True), make_optimizer("nesterov", 0.1, beta=0.5)):
        path, _ = _run(same, np.zeros(1), grads)
        np.testing.assert_array_equal(path, [p1, p2, p3])
    (h1, _, _), _ = _run(momentum(0.1, beta=0.5), np.zeros(1), grads)
    assert h1[0] == pytest.approx(-0.1)


def test_adamw_by_hand_two_steps_with_mask():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.5
    mask = np.array([True, False, True])
    p0 = np.array([2.0, -3.0, 0.0])
    g1, g2 = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.5, -1.0])
    w = mask.astype(float)
    # Adam's moments see only the gradient; the decay term is added after (decoupled).
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
    u1 = -lr * ((m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps) + wd * w * p0)
    p1 = p0 + u1
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
    u2 = -lr * ((m2 / (1 - b1**2)) / (np.sqrt(v2 / (1 - b2**2)) + eps) + wd * w * p1)
    opt = adamw(lr, b1, b2, eps, weight_decay=wd, mask=mask)
    (q1, q2), state = _run(opt, p0, [g1, g2])
    np.testing.assert_allclose(q1, p1, rtol=1e-13)
    np.testing.assert_allclose(q2, p1 + u2, rtol=1e-13)
    np.testing.assert_allclose(state["mu"], m2)
    np.testing.assert_allclose(state["nu"], v2)
    assert set(state) == {"step", "mu", "nu"}
    # First step: Adam's part is -lr * sign(g); coordinate 0 also decays by lr*wd*p0 = 0.1.
    np.testing.assert_allclose(q1, [2.0 - 0.1 - 0.1, -3.0 + 0.1, -0.1], rtol=1e-7)


def test_adamw_without_decay_is_adam_and_mask_excludes_coordinates():
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(4)]
    adam_path, adam_state = _run(adam(0.05), p0, grads)
    zero_path, zero_state = _run(adamw(0.05, weight_decay=0.0), p0, grads)
    np.testing.assert_array_equal(zero_path, adam_path)
    for k in adam_state:
        np.testing.assert_array_equal(zero_state[k], adam_state[k])
    mask = np.array([True, False, True, False, False])
    masked_path, _ = _run(adamw(0.05, weight_decay=0.3, mask=mask), p0, grads)
    for adam_p, masked_p in zip(adam_path, masked_path, strict=True):
        np.testing.assert_array_equal(masked_p[~mask], adam_p[~mask])
        assert np.all(masked_p[mask] != adam_p[mask])


def test_adamw_with_zero_gradient_only_decays():
    # m = v = 0 so Adam's direction is 0/(0 + eps) = 0: p <- p - lr*wd*p = (1 - lr*wd) p.
    p0 = np.array([1.0, -4.0])
    (p1, p2), _ = _run(adamw(0.1, weight_decay=0.5), p0, [np.zeros(2)] * 2)
    np.testing.assert_allclose(p1, 0.95 * p0, rtol=1e-15)
    np.testing.assert_allclose(p2, 0.95**2 * p0, rtol=1e-15)


def test_adamw_mask_is_checked():
    with pytest.raises(OptimizerError, match="boolean"):
        adamw(0.1, mask=np.array([1, 0]))
    opt = adamw(0.1, mask=np.array([True, False]))
    with pytest.raises(OptimizerError, match="shape"):
        opt.init(np.zeros(3))
    # make_optimizer hands the mask to adamw and lets the optimizers without decay ignore it.
    mask = np.array([True, False])
    (p1,), _ = _run(
        make_optimizer("adamw", 0.1, mask=mask, weight_decay=1.0), np.ones(2), [np.zeros(2)]
    )
    np.testing.assert_allclose(p1, [0.9, 1.0])
    (p1,), _ = _run(make_optimizer("sgd", 0.1, mask=mask), np.ones(2), [np.ones(2)])
    np.testing.assert_allclose(p1, [0.9, 0.9])


def test_adagrad_by_hand_three_steps():
    # optax.adagrad: G <- G + g^2 (G0 = initial_accumulator_value), u = -lr * g / sqrt(G + eps)
    lr, g0, eps = 0.5, 0.1, 1e-7
    g1, g2, g3 = np.array([1.0, -2.0]), np.array([0.5, 0.0]), np.array([-1.0, 1.0])
    G1 = g0 + g1**2  # [1.1, 4.1]
    G2 = G1 + g2**2  # [1.35, 4.1]
    G3 = G2 + g3**2  # [2.35, 5.1]
    u1, u2, u3 = (-lr * g / np.sqrt(G + eps) for g, G in [(g1, G1), (g2, G2), (g3, G3)])
    (p1, p2, p3), state = _run(adagrad(lr), np.zeros(2), [g1, g2, g3])
    np.testing.assert_allclose(p1, u1, rtol=1e-14)
    np.testing.assert_allclose(p2, u1 + u2, rtol=1e-14)
    np.testing.assert_allclose(p3, u1 + u2 + u3, rtol=1e-14)
    np.testing.assert_allclose(state["sum_of_squares"], [2.35, 5.1])
    assert set(state) == {"step", "sum_of_squares"} and int(state["step"]) == 3


def test_adagrad_first_step_reference_values():
    # optax.adagrad(0.1) defaults (initial_accumulator_value=0.1, eps=1e-7), g = [1, -2, 0.5]:
    # -0.1 * g / sqrt(0.1 + g^2 + 1e-7), evaluated once and written down.
    (p1,), _ = _run(adagrad(0.1), np.zeros(3), [np.array([1.0, -2.0, 0.5])])
    np.testing.assert_allclose(
        p1, [-0.095346254590639, 0.098772958460411, -0.084515413399222], rtol=1e-13
    )
    # With a zero accumulator a zero gradient gives a zero update, not 0/0.
    (p1,), _ = _run(
        adagrad(1.0, initial_accumulator_value=0.0, eps=0.0), np.zeros(2), [np.array([3.0, 0.0])]
    )
    np.testing.assert_array_equal(p1, [-1.0, 0.0])


def test_rmsprop_by_hand_three_steps():
    # optax.rmsprop (non-centred, initial_scale=0), eps after the square root:
    # nu <- d nu + (1 - d) g^2, u = -lr * g / (sqrt(nu) + eps)
    lr, d, eps = 0.01, 0.9, 1e-8
    g1, g2, g3 = np.array([1.0, -2.0]), np.array([0.5, 0.0]), np.array([-1.0, 4.0])
    n1 = 0.1 * g1**2  # [0.1, 0.4]
    n2 = d * n1 + 0.1 * g2**2  # [0.115, 0.36]
    n3 = d * n2 + 0.1 * g3**2  # [0.2035, 1.924]
    u1, u2, u3 = (-lr * g / (np.sqrt(n) + eps) for g, n in [(g1, n1), (g2, n2), (g3, n3)])
    (p1, p2, p3), state = _run(rmsprop(lr, decay=d, eps=eps), np.zeros(2), [g1, g2, g3])
    np.testing.assert_allclose(p1, u1, rtol=1e-14)
    np.testing.assert_allclose(p2, u1 + u2, rtol=1e-14)
    np.testing.assert_allclose(p3, u1 + u2 + u3, rtol=1e-14)
    np.testing.assert_allclose(state["nu"], [0.2035, 1.924])
    assert set(state) == {"step", "nu"} and int(state["step"]) == 3


def test_rmsprop_first_step_reference_values():
    # No bias correction: the first step is -lr * g / (sqrt((1 - decay) g^2) + eps), i.e.
    # -lr * sign(g) / sqrt(0.1) = -3.16227766 * lr * sign(g) up to eps. Values evaluated once
    # from optax's formula (decay=0.9, eps=1e-8 after the root) and written down.
    g = np.array([1.0, -2.0, 0.5])
    (p1,), _ = _run(rmsprop(0.1), np.zeros(3), [g])
    np.testing.assert_allclose(
        p1, [-0.316227756016838, 0.316227761016838, -0.316227746016839], rtol=1e-13
    )
    np.testing.assert_allclose(p1, -0.1 * np.sign(g) / math.sqrt(0.1), rtol=1e-7)
    # eps inside the square root (optax's eps_in_sqrt=True): -0.1 g / sqrt(0.1 g^2 + 1e-2)
    (p1,), _ = _run(rmsprop(0.1, eps=1e-2, eps_in_sqrt=True), np.zeros(3), [g])
    np.testing.assert_allclose(p1, -0.1 * g / np.sqrt(0.1 * g**2 + 1e-2), rtol=1e-14)
    (q1,), _ = _run(rmsprop(0.1, eps=1e-2), np.zeros(3), [g])
    assert np.all(np.abs(q1) != np.abs(p1))  # the two eps placements differ


def test_clip_by_global_norm_above_below_and_at_threshold():
    clip = clip_by_global_norm(1.0)
    params = np.zeros(2)
    state = clip.init(params)
    assert set(state) == {"step"}
    # ||(3, 4)|| = 5 > 1: scaled by 1/5, direction kept.
    out, state = clip.update(np.array([3.0, 4.0]), state, params)
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-15)
    assert int(state["step"]) == 1
    # ||(0.3, 0.4)|| = 0.5 < 1: unchanged (a new array, not the input).
    g = np.array([0.3, 0.4])
    out, _ = clip.update(g, state, params)
    np.testing.assert_array_equal(out, g)
    assert out is not g
    # Exactly at the threshold the gradient is unchanged; zero stays zero.
    out, _ = clip_by_global_norm(5.0).update(np.array([3.0, 4.0]), state, params)
    np.testing.assert_allclose(out, [3.0, 4.0], rtol=1e-15)
    out, _ = clip.update(np.zeros(2), state, params)
    np.testing.assert_array_equal(out, [0.0, 0.0])
    # Huge gradients do not overflow in the norm.
    out, _ = clip.update(np.array([3e200, 4e200]), state, params)
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-14)
    with pytest.raises(OptimizerError, match="max_norm"):
        clip_by_global_norm(0.0)


def test_clip_chained_in_front_of_an_optimizer():
    # clip then sgd(0.1): g = (30, 40), norm 50 > 2 -> (1.2, 1.6) -> update (-0.12, -0.16)
    opt = chain(clip_by_global_norm(2.0), sgd(0.1))
    (p1,), state = _run(opt, np.zeros(2), [np.array([30.0, 40.0])])
    np.testing.assert_allclose(p1, [-0.12, -0.16], rtol=1e-14)
    # make_optimizer(clip_norm=...) is the same chain; adam after a clip is unchanged on step 1
    # (Adam is scale-invariant), but the moments see the clipped gradient.
    made = make_optimizer("adam", 0.1, clip_norm=2.0)
    state = made.init(np.zeros(2))
    assert set(state) == {"step", "0/step", "1/step", "1/mu", "1/nu"}
    _, state = made.update(np.array([30.0, 40.0]), state, np.zeros(2))
    np.testing.assert_allclose(state["1/mu"], 0.1 * np.array([1.2, 1.6]), rtol=1e-14)
    assert set(make_optimizer("sgd", 0.1, clip_norm=None).init(np.zeros(1))) == {"step"}


def _optimizers():
    """Every optimizer, built fresh on each call (as a new process would)."""
    mask = np.array([True, True, False, True])
    return {
        "sgd": lambda: sgd(0.015),
        "momentum": lambda: momentum(0.005, beta=0.9),
        "nesterov": lambda: nesterov(0.005),
        "adam": lambda: adam(0.1),
        "adamw": lambda: adamw(0.1, weight_decay=1e-3, mask=mask),
        "adagrad": lambda: adagrad(1.0),
        "rmsprop": lambda: rmsprop(0.02),
        "clip+adam": lambda: make_optimizer("adam", 0.1, clip_norm=1.0),
        "clip+momentum, warmup+cosine": lambda: make_optimizer(
            "momentum",
            make_schedule("cosine", 0.005, warmup=10, total_steps=190),
            clip_norm=5.0,
        ),
        "nested chain": lambda: chain(
            clip_by_global_norm(10.0), chain(clip_by_global_norm(5.0), rmsprop(0.02))
        ),
    }


def _quadratic():
    """f(x) = 0.5 x^T A x, A SPD with eigenvalues 1..100 in a rotated basis."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    a = q @ np.diag([1.0, 5.0, 25.0, 100.0]) @ q.T
    return a, np.array([1.0, -2.0, 0.5, 1.5])


@pytest.mark.parametrize("name", list(_optimizers()))
def test_reduces_ill_conditioned_quadratic(name):
    a, x = _quadratic()
    f0 = 0.5 * x @ a @ x
    opt = _optimizers()[name]()
    state = opt.init(x)
    for _ in range(200):
        updates, state = opt.update(a @ x, state, x)
        x = apply_updates(x, updates)
    assert 0.5 * x @ a @ x < 1e-3 * f0
    assert int(state["step"]) == 200


@pytest.mark.parametrize("name", list(_optimizers()))
def test_checkpoint_midway_continues_exactly(name):
    a, x0 = _quadratic()

    def steps(opt, x, state, n):
        for _ in range(n):
            updates, state = opt.update(a @ x, state, x)
            x = apply_updates(x, updates)
        return x, state

    opt = _optimizers()[name]()
    x_straight, s_straight = steps(opt, x0, opt.init(x0), 14)
    x_mid, s_mid = steps(opt, x0, opt.init(x0), 7)
    loaded = _roundtrip(s_mid)
    assert set(loaded) == set(s_mid)
    assert all(isinstance(v, np.ndarray) for v in loaded.values())
    assert loaded["step"].dtype == np.int64 and int(loaded["step"]) == 7
    fresh = _optimizers()[name]()  # a new process rebuilds the optimizer from the spec
    x_resumed, s_resumed = steps(fresh, x_mid, loaded, 7)
    np.testing.assert_array_equal(x_resumed, x_straight)
    assert set(s_resumed) == set(s_straight)
    for k in s_straight:
        np.testing.assert_array_equal(s_resumed[k], s_straight[k])
        assert s_resumed[k].dtype == s_straight[k].dtype


def test_chain_state_keys_survive_npz_on_disk(tmp_path):
    opt = chain(clip_by_global_norm(1.0), chain(sgd(0.1), adam(0.1)))
    state = opt.init(np.zeros(2))
    assert set(state) == {"step", "0/step", "1/step", "1/0/step", "1/1/step", "1/1/mu", "1/1/nu"}
    np.savez(tmp_path / "s.npz", **state)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(state)


def test_make_optimizer_names_the_allowed_choices():
    with pytest.raises(OptimizerError) as err:
        make_optimizer("lbfgs", 0.1)
    assert "adagrad, adam, adamw, momentum, nesterov, rmsprop, sgd" in str(err.value)
    with pytest.raises(OptimizerError) as err:
        make_optimizer("adamw", 0.1, beta=0.9)
    assert "'beta'" in str(err.value) and "b1, b2, eps, weight_decay" in str(err.value)
    with pytest.raises(OptimizerError, match="allowed: none"):
        make_optimizer("sgd", 0.1, eps=1e-8)
    with pytest.raises(OptimizerError, match="initial_accumulator_value, eps"):
        make_optimizer("adagrad", 0.1, decay=0.9)
    with pytest.raises(OptimizerError, match="decay, eps, eps_in_sqrt"):
        make_optimizer("rmsprop", 0.1, b1=0.9)


@pytest.mark.parametrize(
    ("name", "lr", "kwargs", "bad"),
    [
        ("adamw", 0.1, {"weight_decay": -1.0}, "weight_decay"),
        ("adamw", 0.1, {"b2": 1.0}, "b2"),
        ("adagrad", 0.1, {"initial_accumulator_value": -0.1}, "initial_accumulator_value"),
        ("adagrad", 0.1, {"eps": float("nan")}, "eps"),
        ("rmsprop", 0.1, {"decay": 1.0}, "decay"),
        ("rmsprop", 0.1, {"eps": "small"}, "eps"),
        ("nesterov", 0.1, {"beta": -0.1}, "beta"),
        ("momentum", 0.1, {"nesterov": "yes"}, "nesterov"),
        ("adam", 0.0, {}, "learning_rate"),
        ("adam", 0.1, {"clip_norm": -1.0}, "clip_norm"),
        ("adamw", 0.1, {"mask": np.array([0, 1])}, "mask"),
    ],
)
def test_make_optimizer_rejects_bad_values(name, lr, kwargs, bad):
    with pytest.raises(OptimizerError, match=bad):
        make_optimizer(name, lr, **kwargs)

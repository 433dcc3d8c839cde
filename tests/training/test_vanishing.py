"""VanishingGradientRegularizer (Pascanu et al.'s Ω) against numpy references."""

import keras
import numpy as np
import pytest
from keras import ops

from deepkit.layers import DeepTransitionCell, DeepTransitionRNN
from deepkit.testing import input_gradient
from deepkit.training import ClipGradients
from deepkit.training.vanishing import (VanishingGradientRegularizer, backproject,
                                        vanishing_penalty)

B, T, D, H = 3, 5, 2, 4


def _data(seed=0, masked_steps=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D)).astype("float32")
    x[:, :masked_steps] = 0.0
    y = rng.normal(size=(B, 1)).astype("float32")
    return x, y


def _simple_model(activation="tanh", masking=False, seed=1):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((T, D))]
    if masking:
        layers.append(keras.layers.Masking(0.0))
    layers += [keras.layers.SimpleRNN(H, activation=activation, name="rnn",
                                      recurrent_initializer=keras.initializers.RandomNormal(stddev=0.6)),
               keras.layers.Dense(1, name="out")]
    return keras.Sequential(layers)


def _numpy_step(model, x, y, alpha, lr, activation="tanh", masked_steps=0):
    """One SGD step of loss + α Ω by hand: BPTT for δ_k, Ω and ∂Ω/∂R with the
    δ_k and the activations' derivatives held constant (the authors' code)."""
    rnn, out = model.get_layer("rnn"), model.get_layer("out")
    K, R, b = (np.asarray(v, "float64") for v in (rnn.cell.kernel, rnn.cell.recurrent_kernel,
                                                   rnn.cell.bias))
    Wo, bo = (np.asarray(v, "float64") for v in (out.kernel, out.bias))
    f = {"tanh": np.tanh, "sigmoid": lambda a: 1 / (1 + np.exp(-a))}[activation]
    fprime = {"tanh": lambda h: 1 - h ** 2, "sigmoid": lambda h: h * (1 - h)}[activation]
    x = x.astype("float64")
    hs = [np.zeros((B, H))]
    for k in range(T):
        if k < masked_steps:       # Masking: the state is carried unchanged
            hs.append(hs[-1])
        else:
            hs.append(f(x[:, k] @ K + b + hs[-1] @ R))
    pred = hs[-1] @ Wo + bo
    err = 2 * (pred - y) / B                      # ∂ mean((pred - y)²) / ∂pred
    deltas = [None] * (T + 1)
    deltas[T] = err @ Wo.T
    gR, gK, gb = np.zeros_like(R), np.zeros_like(K), np.zeros_like(b)
    for k in range(T, 0, -1):
        if k - 1 < masked_steps:
            deltas[k - 1] = deltas[k]
            continue
        v = deltas[k] * fprime(hs[k])
        gR += hs[k - 1].T @ v
        gK += x[:, k - 1].T @ v
        gb += v.sum(0)
        deltas[k - 1] = v @ R.T
    # Ω over the steps that ran; a masked step's probe has no effect (δ = 0).
    terms, grad_omega, count = 0.0, np.zeros_like(R), 0
    for k in range(1, T + 1):
        if k - 1 < masked_steps:
            continue
        d = deltas[k]
        v = d * fprime(hs[k])
        back = v @ R.T
        above, below = (back ** 2).sum(1), (d ** 2).sum(1)
        r = above / below
        terms += ((r - 1) ** 2).sum()
        count += B
        # ∂‖v Rᵀ‖²/∂R[j, i] = 2 (v Rᵀ)_j v_i
        for n in range(B):
            grad_omega += 2 * (r[n] - 1) / below[n] * 2 * np.outer(back[n], v[n])
    omega = terms / count
    grad_omega /= count
    expected = {
        "R": R - lr * (gR + alpha * grad_omega),
        "K": K - lr * gK,
        "b": b - lr * gb,
        "Wo": Wo - lr * hs[-1].T @ err,
    }
    return expected, omega


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_one_step_matches_numpy(activation):
    x, y = _data()
    model = _simple_model(activation)
    alpha, lr = 2.5, 0.1
    expected, omega = _numpy_step(model, x, y, alpha, lr, activation)
    model.compile(keras.optimizers.SGD(lr), "mse")
    history = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                        callbacks=[VanishingGradientRegularizer(weight=alpha)])
    rnn = model.get_layer("rnn")
    np.testing.assert_allclose(np.asarray(rnn.cell.recurrent_kernel), expected["R"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rnn.cell.kernel), expected["K"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.get_layer("out").kernel), expected["Wo"],
                               rtol=1e-4, atol=1e-5)
    assert history.history["omega"][0] == pytest.approx(omega, rel=1e-4)
    assert history.history["omega_weight"] == [pytest.approx(alpha)]
    assert omega > 1e-3


def test_masked_steps_are_left_out():
    x, y = _data(masked_steps=2)
    model = _simple_model(masking=True)
    expected, omega = _numpy_step(model, x, y, 3.0, 0.05, masked_steps=2)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    history = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                        callbacks=[VanishingGradientRegularizer(weight=3.0)])
    np.testing.assert_allclose(np.asarray(model.get_layer("rnn").cell.recurrent_kernel),
                               expected["R"], rtol=1e-4, atol=1e-5)
    assert history.history["omega"][0] == pytest.approx(omega, rel=1e-4)


def test_penalty_against_numpy_with_bound():
    rng = np.random.default_rng(3)
    deltas = rng.normal(size=(2, 3, 4)).astype("float32")
    deltas[0, 1] = 0.0                     # below the bound: left out
    back = rng.normal(size=(2, 3, 4)).astype("float32")
    omega, kept = vanishing_penalty(deltas, back, bound=1e-20)
    below, above = (deltas ** 2).sum(-1), (back ** 2).sum(-1)
    keep = below >= 1e-20
    ratio = np.where(keep, above / np.where(keep, below, 1), 1)
    assert float(omega) == pytest.approx(((ratio - 1) ** 2).sum() / keep.sum(), rel=1e-5)
    assert float(kept) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="batch, time, units"):
        vanishing_penalty(deltas[0], back[0])


def _vjp_wrt_previous(cell, projected, previous, delta):
    """δ ∂h_k/∂h_{k-1} by the backend's automatic differentiation."""
    if keras.backend.backend() == "jax":
        import jax

        def f(h):
            return cell.transition(projected, h)
        _, pullback = jax.vjp(f, ops.convert_to_tensor(previous))
        return np.asarray(pullback(ops.convert_to_tensor(delta))[0])
    if keras.backend.backend() == "torch":
        # The gradient of Σ δ ⊙ h_k with respect to h_{k-1}: the same product.
        return input_gradient(
            lambda h: ops.sum(ops.multiply(cell.transition(projected, h), delta)), previous)
    import tensorflow as tf

    h = tf.convert_to_tensor(previous)
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = cell.transition(projected, h)
    return tape.gradient(out, h, output_gradients=tf.convert_to_tensor(delta)).numpy()


@pytest.mark.parametrize("options", [
    dict(transition_layers=[]),
    dict(transition_layers=[5], activation="sigmoid", transition_activation="tanh"),
    dict(transition_layers=[5, 3], shortcut=True, leaky=0.3),
    dict(transition_layers=[5], shortcut=True, leaky="learned"),
])
def test_deep_transition_backprojection_is_the_jacobian(options):
    keras.utils.set_random_seed(4)
    cell = DeepTransitionCell(H, **options)
    cell.build((None, D))
    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(2, 3, D)).astype("float32")
    previous = rng.normal(size=(2, 3, H)).astype("float32")
    delta = rng.normal(size=(2, 3, H)).astype("float32")
    projected = cell.project_inputs(inputs)
    record = {"projected": projected, "previous": previous,
              "states": cell.transition(projected, previous)}
    got = ops.convert_to_numpy(backproject(cell, delta, record))
    want = _vjp_wrt_previous(cell, projected, previous, delta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_deep_transition_training_moves_only_recurrent_matrices():
    x, y = _data(seed=6)

    def trained(weight):
        keras.utils.set_random_seed(7)
        model = keras.Sequential([
            keras.Input((T, D)),
            DeepTransitionRNN(H, transition_layers=[3], shortcut=True, name="rnn"),
            keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), "mse")
        history = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                            callbacks=[VanishingGradientRegularizer(weight=weight)])
        return model, history.history["omega"][0]

    plain, omega0 = trained(0.0)
    regular, omega = trained(5.0)
    assert omega == pytest.approx(omega0, rel=1e-5) and omega > 0
    cell = regular.get_layer("rnn").cell
    recurrent = {id(v) for v in [cell.recurrent_kernel, *cell.transition_kernels,
                                 cell.shortcut_kernel]}
    moved = []
    for v, w in zip(regular.trainable_variables, plain.trainable_variables):
        diff = np.abs(np.asarray(v) - np.asarray(w)).max()
        if id(v) in recurrent:
            moved.append(diff)
        else:
            assert diff < 1e-7, v.path
    assert len(moved) == 3 and min(moved) > 1e-6


def test_weight_schedule_and_clipping_and_restore():
    x, y = _data(seed=8)
    model = _simple_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(4.0, decay_steps=1, decay_rate=0.5)
    model.compile(ClipGradients(keras.optimizers.SGD(0.01), threshold=0.5), "mse")
    regularizer = VanishingGradientRegularizer(weight=schedule)
    history = model.fit(np.concatenate([x, x]), np.concatenate([y, y]), batch_size=B,
                        epochs=2, shuffle=False, verbose=0, callbacks=[regularizer])
    # Two steps per epoch: α at the end of epoch 1 is 4·0.5², of epoch 2 4·0.5⁴.
    assert history.history["omega_weight"] == [pytest.approx(1.0), pytest.approx(0.25)]
    assert "train_step" not in model.__dict__ and model.train_function is None
    # A later fit without the callback trains as plain Keras does.
    before = [np.asarray(v) for v in model.trainable_variables]
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    assert "omega" not in model.history.history
    config = regularizer.get_config()
    again = VanishingGradientRegularizer.from_config(config)
    assert again.get_config() == config
    assert float(again.weight_at(2)) == pytest.approx(1.0)
    assert any(np.abs(np.asarray(v) - b).max() > 0 for v, b in zip(model.trainable_variables,
                                                                  before))


def test_clear_errors():
    model = keras.Sequential([keras.Input((T, D)), keras.layers.LSTM(3, name="lstm"),
                              keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no SimpleRNN or DeepTransitionRNN"):
        VanishingGradientRegularizer().set_model(model)
    with pytest.raises(ValueError, match="'lstm' has a LSTMCell"):
        VanishingGradientRegularizer(layers=["lstm"]).set_model(model)
    with pytest.raises(ValueError, match=r"no layer named \['nope'\]"):
        VanishingGradientRegularizer(layers="nope").set_model(model)
    backwards = keras.Sequential([keras.Input((T, D)),
                                  keras.layers.SimpleRNN(3, go_backwards=True, name="b")])
    with pytest.raises(ValueError, match="go_backwards"):
        VanishingGradientRegularizer().set_model(backwards)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        VanishingGradientRegularizer(weight=-1)
    softsign = _simple_model(activation="softsign")
    softsign.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = _data()
    with pytest.raises(ValueError, match="activation 'softsign'"):
        softsign.fit(x, y, batch_size=B, verbose=0, callbacks=[VanishingGradientRegularizer()])

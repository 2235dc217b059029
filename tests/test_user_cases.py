"""The models users bring to kerasfix: a VAE, a detector, a custom Loss."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from support import frozen_sgd, raw_losses  # noqa: E402

ops = keras.ops
N, BATCH = 20, 16


def kl_divergence(y_true, y_pred):
    """KL of N(mean, exp(log_var)) from N(0, 1); `y_true` is a dummy."""
    mean, log_var = ops.split(y_pred, 2, axis=-1)
    return -0.5 * ops.mean(
        1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1
    )


class RegularizedMSE(keras.losses.Loss):
    def __init__(self, factor=0.1, name="regularized_mse"):
        super().__init__(name=name)
        self.factor = factor

    def call(self, y_true, y_pred):
        mse = ops.mean(ops.square(y_true - y_pred), axis=-1)
        return mse + self.factor * ops.mean(ops.square(y_pred), axis=-1)


def assert_raw_losses_reported(model, x, ys, losses, loss_weights):
    """Compiles with `losses`, evaluates and fits one epoch (weights frozen):
    every `<out>_loss` and `val_<out>_loss` must be that output's raw loss."""
    model.compile(frozen_sgd(), loss=losses, loss_weights=loss_weights)
    logs = model.evaluate(x, ys, batch_size=BATCH, return_dict=True, verbose=0)
    history = model.fit(
        x, ys, batch_size=BATCH, shuffle=False, validation_data=(x, ys), verbose=0
    ).history
    for name, value in raw_losses(model, x, ys, losses).items():
        assert logs[f"{name}_loss"] == pytest.approx(value, rel=1e-5)
        assert history[f"{name}_loss"] == pytest.approx([value], rel=1e-5)
        assert history[f"val_{name}_loss"] == pytest.approx([value], rel=1e-5)


def test_vae_reports_raw_kl_and_raw_reconstruction(patched):
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    x = (rng.random((N, 6)) > 0.5).astype("float32")
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    encoder = keras.layers.Dense(4, name="encoder")(h)  # mean | log_var
    mean, _ = keras.layers.Lambda(lambda t: ops.split(t, 2, axis=-1))(encoder)
    decoder = keras.layers.Dense(6, activation="sigmoid", name="decoder")(mean)
    model = keras.Model(inp, {"encoder": encoder, "decoder": decoder})
    g = 0.8
    assert_raw_losses_reported(
        model,
        x,
        {"encoder": np.zeros((N, 4), "float32"), "decoder": x},
        {"encoder": kl_divergence, "decoder": "binary_crossentropy"},
        {"encoder": 1 - g, "decoder": g},
    )


def test_detector_reports_raw_bbox_and_classification(patched):
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, 5)).astype("float32")
    inp = keras.Input((5,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    bbox = keras.layers.Dense(4, name="bbox")(h)
    classes = keras.layers.Dense(3, activation="softmax", name="classification")(h)
    model = keras.Model(inp, [bbox, classes])
    ys = {
        "bbox": rng.normal(size=(N, 4)).astype("float32"),
        "classification": rng.integers(0, 3, size=(N, 1)),
    }
    assert_raw_losses_reported(
        model,
        x,
        ys,
        {"bbox": "mse", "classification": "sparse_categorical_crossentropy"},
        {"bbox": 1.0, "classification": 1.5},
    )


def test_subclassed_loss_with_regularization_factor(patched):
    keras.utils.set_random_seed(6)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(N, 4)).astype("float32")
    inp = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(
        inp, [keras.layers.Dense(2, name="a")(h), keras.layers.Dense(1, name="b")(h)]
    )
    ys = {
        "a": rng.normal(size=(N, 2)).astype("float32"),
        "b": rng.normal(size=(N, 1)).astype("float32"),
    }
    assert_raw_losses_reported(
        model, x, ys, {"a": RegularizedMSE(0.25), "b": "mae"}, {"a": 2.0, "b": 0.5}
    )

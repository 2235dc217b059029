"""Built-in callbacks on kerasfix's per-output losses, with no `mode`."""

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402

RNG = np.random.default_rng(3)
X = RNG.normal(size=(44, 4)).astype("float32")
Y = [
    (X @ RNG.normal(size=(4, 1)) + 0.3 * RNG.normal(size=(44, 1))).astype("float32"),
    RNG.normal(size=(44, 1)).astype("float32"),
]
VALIDATION = (
    RNG.normal(size=(16, 4)).astype("float32"),
    [RNG.normal(size=(16, 1)).astype("float32") for _ in range(2)],
)
NO_DIRECTION = "automatically determine"


def build(k, weights=None):
    k.utils.set_random_seed(0)
    inp = k.Input((4,))
    h = k.layers.Dense(8, activation="tanh", name="h")(inp)
    model = k.Model(
        inp, [k.layers.Dense(1, name="alpha")(h), k.layers.Dense(1, name="beta")(h)]
    )
    if weights is not None:
        model.set_weights(weights)
    model.compile(
        k.optimizers.SGD(learning_rate=0.2),
        loss=["mse", "mse"],
        metrics=[["mae"], ["mse"]],
    )
    return model


def learning_rate(k, model):
    rate = model.optimizer.learning_rate
    if hasattr(k, "ops"):  # Keras 3
        return float(k.ops.convert_to_numpy(rate))
    return float(k.backend.get_value(rate))


def train(k, folder, weights=None, epochs=30, callbacks=None):
    """Fits with the three callbacks on `val_alpha_loss`, no `mode`;
    returns the initial weights, the history, the checkpoints written and
    the learning rate after each epoch."""
    model = build(k, weights)
    initial = model.get_weights()
    rates = []
    callbacks = callbacks or [
        k.callbacks.ReduceLROnPlateau(monitor="val_alpha_loss", patience=1, factor=0.5),
        k.callbacks.EarlyStopping(monitor="val_alpha_loss", patience=3),
        k.callbacks.ModelCheckpoint(
            os.path.join(folder, "{epoch:02d}.weights.h5"),
            monitor="val_alpha_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        k.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: rates.append(learning_rate(k, model))
        ),
    ]
    history = model.fit(
        X,
        Y,
        batch_size=8,
        epochs=epochs,
        shuffle=False,
        validation_data=VALIDATION,
        callbacks=callbacks,
        verbose=0,
    ).history
    return initial, history, sorted(os.listdir(folder)), rates


@pytest.mark.oracle
def test_early_stopping_checkpoint_and_lr_reduction_on_output_loss_equal_tf_keras(
    patched, tmp_path
):
    tf_keras = pytest.importorskip("tf_keras")
    (tmp_path / "tf_keras").mkdir()
    (tmp_path / "keras").mkdir()
    weights, theirs, their_files, their_rates = train(tf_keras, tmp_path / "tf_keras")
    _, ours, our_files, our_rates = train(keras, tmp_path / "keras", weights)
    # The run is long enough for each callback to act, and stops early.
    assert 1 < len(their_files) < len(theirs["loss"]) < 30
    assert their_rates[-1] < their_rates[0]
    assert len(ours["loss"]) == len(theirs["loss"])
    assert our_files == their_files
    assert our_rates == pytest.approx(their_rates, rel=1e-6)
    assert ours["val_alpha_loss"] == pytest.approx(theirs["val_alpha_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "callback",
    [
        lambda d: keras.callbacks.EarlyStopping(monitor="val_alpha_loss", patience=1),
        lambda d: keras.callbacks.ModelCheckpoint(
            os.path.join(d, "best.weights.h5"),
            monitor="val_alpha_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        lambda d: keras.callbacks.ReduceLROnPlateau(monitor="alpha_loss"),
    ],
    ids=["EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"],
)
def test_each_built_in_callback_minimises_an_output_loss(patched, tmp_path, callback):
    instance = callback(str(tmp_path))
    train(keras, tmp_path, epochs=2, callbacks=[instance])
    assert instance.monitor_op(1.0, 2.0) and not instance.monitor_op(2.0, 1.0)


def test_other_monitors_keep_keras_error(patched, tmp_path):
    stop = keras.callbacks.EarlyStopping(monitor="val_gamma_loss")
    with pytest.raises(ValueError, match=NO_DIRECTION):
        train(keras, tmp_path, epochs=1, callbacks=[stop])


def test_explicit_mode_is_kept(patched, tmp_path):
    stop = keras.callbacks.EarlyStopping(monitor="val_alpha_loss", mode="max")
    train(keras, tmp_path, epochs=1, callbacks=[stop])
    assert stop.monitor_op(2.0, 1.0) and not stop.monitor_op(1.0, 2.0)


def test_without_kerasfix_early_stopping_on_output_loss_raises(patch_supported, tmp_path):
    """Keras's own behaviour, which `disable()` gives back."""
    kerasfix.enable()
    kerasfix.disable()
    stop = keras.callbacks.EarlyStopping(monitor="val_alpha_loss")
    with pytest.raises(ValueError, match=NO_DIRECTION):
        train(keras, tmp_path, epochs=1, callbacks=[stop])


def test_an_output_named_like_a_validation_metric_is_still_minimised(patched):
    """An output `val_b`: its training loss is `val_b_loss`, not the
    validation value of a `b_loss`, and Keras 2 minimised it."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(
        inp, [keras.layers.Dense(1, name="a")(inp), keras.layers.Dense(1, name="val_b")(inp)]
    )
    model.compile(keras.optimizers.SGD(0.1), loss=["mse", "mse"])
    stop = keras.callbacks.EarlyStopping(monitor="val_b_loss", patience=2)
    history = model.fit(X, Y, epochs=3, batch_size=11, callbacks=[stop], verbose=0)
    assert "val_b_loss" in history.history
    assert stop.monitor_op(1.0, 2.0)  # lower is better

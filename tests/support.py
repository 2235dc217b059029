"""Small real models and independent loss recomputation for the tests."""

import os
import subprocess
import sys

import numpy as np

keras = None


def _keras():
    global keras
    if keras is None:
        import keras as _k

        keras = _k
    return keras


def backend():
    return _keras().config.backend()


def keras_version():
    return tuple(int(p) for p in _keras().__version__.split(".")[:2])


def loss_is_per_batch():
    """Keras 3.0-3.1 average `loss` over batches whatever their size, so a
    short last batch makes it differ from Keras 2's; kerasfix leaves it."""
    return keras_version() < (3, 2)


def scalar_loss_weights():
    """Keras 3.0-3.2's CompileLoss rejects a number as `loss_weights` when
    it is made, before any output is known; 3.3 takes it."""
    return keras_version() >= (3, 3)


def data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    ya = (rng.normal(size=(n, 1)) * 3).astype("float32")
    yb = (rng.random((n, 1)) > 0.5).astype("float32")
    yc = rng.normal(size=(n, 2)).astype("float32")
    return x, ya, yb, yc


def _heads(seed, with_c, model_class=None):
    k = _keras()
    k.utils.set_random_seed(seed)
    inp = k.Input((4,))
    h = k.layers.Dense(8, activation="relu")(inp)
    outs = [
        k.layers.Dense(1, name="a")(h),
        k.layers.Dense(1, activation="sigmoid", name="b")(h),
    ]
    if with_c:
        outs.append(k.layers.Dense(2, name="c")(h))
    return (model_class or k.Model)(inp, outs)


def two_outputs(model_class=None):
    """Outputs `a` (linear) and `b` (sigmoid); `model_class` subclasses Model."""
    return _heads(1, False, model_class)


def three_outputs():
    """`a`, `b` and `c` (2 units, linear)."""
    return _heads(2, True)


def frozen_sgd():
    """SGD with learning rate 0: fit's metrics are then those of one model."""
    return _keras().optimizers.SGD(learning_rate=0.0)


LOSS_CLASSES = {
    "mse": "MeanSquaredError",
    "mae": "MeanAbsoluteError",
    "binary_crossentropy": "BinaryCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "huber": "Huber",
    "log_cosh": "LogCosh",
}


def raw_loss(loss, y_true, y_pred, sample_weight=None):
    """One output's loss over the whole dataset, as Keras computes it."""
    k = _keras()
    if isinstance(loss, str):
        loss = getattr(k.losses, LOSS_CLASSES[loss])()
    if isinstance(loss, k.losses.Loss):
        value = loss(y_true, y_pred, sample_weight=sample_weight)
        return float(k.ops.convert_to_numpy(value))
    values = np.asarray(k.ops.convert_to_numpy(loss(y_true, y_pred)))
    if values.ndim == 0:
        return float(values)
    if sample_weight is not None:
        values = values * np.reshape(sample_weight, values.shape[:1] + (1,) * (values.ndim - 1))
    return float(np.sum(values, dtype="float64") / values.size)


def raw_losses(model, x, ys, losses, sample_weight=None):
    """{output: raw loss} recomputed from `predict`, independent of Keras's
    metrics; `losses` and `ys` are dicts keyed like the expected metrics."""
    preds = model.predict(x, verbose=0, batch_size=len(x))
    if not isinstance(preds, dict):
        preds = dict(zip(losses, preds if isinstance(preds, list) else [preds]))
    out = {}
    for name, loss in losses.items():
        if loss is None:
            continue
        sw = sample_weight.get(name) if isinstance(sample_weight, dict) else sample_weight
        out[name] = raw_loss(loss, ys[name], preds[name], sw)
    return out


_cli_runs = {}


def cli(*args, **env):
    """`python -m kerasfix ARGS` in a new process, with only `env`'s KERASFIX*.

    Runs once per session for the same arguments and environment: nothing a
    test does changes what a new process finds, and each one imports Keras.
    """
    full = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    full.update(env)
    key = (args, tuple(sorted(i for i in full.items() if i[0] != "PYTEST_CURRENT_TEST")))
    if key not in _cli_runs:
        _cli_runs[key] = subprocess.run(
            [sys.executable, "-m", "kerasfix", *args],
            env=full, capture_output=True, text=True, timeout=300,
        )
    return _cli_runs[key]


def keras_counts_generator_batches():
    """Whether this Keras, with kerasfix off, trains on every batch of a
    Python generator: on JAX and torch Keras 3.4-3.6 lose the first ones."""
    import kerasfix

    k = _keras()
    was_on = kerasfix.status()["requested_mode"] is not None
    kerasfix.disable()
    try:
        inp = k.Input((2,))
        model = k.Model(inp, k.layers.Dense(1)(inp))
        model.compile("sgd", loss="mse")
        seen = []
        counter = k.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
        batches = ((np.ones((2, 2), "float32"), np.ones((2, 1), "float32")) for _ in range(6))
        model.fit(batches, epochs=1, verbose=0, callbacks=[counter])
    finally:
        if was_on:
            kerasfix.enable()
    return len(seen) == 6

"""The Keras 2 custom-`fit` idiom (`compiled_loss`, `compiled_metrics`) on
Keras 3, against tf-keras; Keras 3's own idiom (`compute_loss`,
`compute_metrics`) unchanged.

Keras 3 keeps `compiled_loss` and `compiled_metrics` in its TensorFlow
trainer only, so these tests run on TensorFlow; elsewhere a Keras 2 step
fails in Keras itself (`AttributeError`), with kerasfix on or off.
"""

import numpy as np
import pytest

import kerasfix
from tests import support

RTOL = 1e-5
BATCH = 8  # 20 samples: a short last batch, so batch weighting shows


@pytest.fixture
def tensorflow():
    if support.backend() != "tensorflow":
        pytest.skip("Keras 3 has compiled_loss/compiled_metrics in its TensorFlow trainer only")
    import tensorflow

    return tensorflow


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype("float32")
    ys = [rng.normal(size=(20, 1)).astype("float32") for _ in range(2)]
    return x, ys


def keras2_model(k, tf):
    """A two-output model whose steps are Keras 2's custom-`fit` idiom."""

    class Keras2Steps(k.Model):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compiled_loss(y, y_pred, regularization_losses=self.losses)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            self.compiled_metrics.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y = data
            y_pred = self(x, training=False)
            self.compiled_loss(y, y_pred, regularization_losses=self.losses)
            self.compiled_metrics.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

    return build(k, Keras2Steps)


@pytest.mark.oracle
def test_a_step_without_regularization_losses_logs_the_compiled_losses(patched, tensorflow):
    # Keras 2 logged (and trained on) the compiled losses alone; Keras 3
    # trains on them plus `self.losses`, and kerasfix logs Keras 2's value.
    tf_keras = pytest.importorskip("tf_keras")
    import keras

    def evaluated(k):
        class Keras2Test(k.Model):
            def test_step(self, data):
                x, y = data
                y_pred = self(x, training=False)
                self.compiled_loss(y, y_pred)
                self.compiled_metrics.update_state(y, y_pred)
                return {m.name: m.result() for m in self.metrics}

        model = compile_(k, build(k, Keras2Test), run_eagerly=False)
        x, ys = data()
        logs = model.evaluate(x, ys, batch_size=BATCH, verbose=0, return_dict=True)
        return {key: float(value) for key, value in logs.items()}

    theirs, ours = evaluated(tf_keras), evaluated(keras)
    assert list(ours) == list(theirs)
    assert ours == pytest.approx(theirs, rel=RTOL)


def build(k, model_class):
    inp = k.Input((3,))
    # A regularizer: `self.losses` must be counted once in `loss`.
    a = k.layers.Dense(1, name="a", kernel_regularizer=k.regularizers.L2(0.1))(inp)
    b = k.layers.Dense(1, name="b")(inp)
    model = model_class(inp, [a, b])
    model.set_weights(
        [np.full(w.shape, 0.1 * (i + 1), "float32") for i, w in enumerate(model.get_weights())]
    )
    return model


def compile_(k, model, run_eagerly):
    model.compile(
        k.optimizers.SGD(0.1),
        loss=["mse", "mae"],
        loss_weights=[0.5, 2.0],
        metrics={"a": ["mae"]},
        run_eagerly=run_eagerly,
    )
    return model


def run(k, model):
    x, ys = data()
    history = model.fit(
        x, ys, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x, ys)
    ).history
    return {
        "history": {key: [float(v) for v in values] for key, values in history.items()},
        "evaluate_dict": {
            key: float(v)
            for key, v in model.evaluate(
                x, ys, batch_size=BATCH, verbose=0, return_dict=True
            ).items()
        },
        "evaluate": [float(v) for v in model.evaluate(x, ys, batch_size=BATCH, verbose=0)],
        "metrics_names": list(model.metrics_names),
    }


@pytest.mark.oracle
@pytest.mark.parametrize("run_eagerly", [False, True])
def test_keras2_custom_steps_log_what_tf_keras_logs(patched, tensorflow, run_eagerly):
    tf_keras = pytest.importorskip("tf_keras")
    import keras

    theirs = run(tf_keras, compile_(tf_keras, keras2_model(tf_keras, tensorflow), run_eagerly))
    ours = run(keras, compile_(keras, keras2_model(keras, tensorflow), run_eagerly))
    assert theirs["metrics_names"] == ["loss", "a_loss", "b_loss", "a_mae"]
    assert list(ours["history"]) == list(theirs["history"])
    for key, values in theirs["history"].items():
        assert ours["history"][key] == pytest.approx(values, rel=RTOL), key
    assert list(ours["evaluate_dict"]) == list(theirs["evaluate_dict"])
    assert ours["evaluate_dict"] == pytest.approx(theirs["evaluate_dict"], rel=RTOL)
    assert ours["evaluate"] == pytest.approx(theirs["evaluate"], rel=RTOL)
    assert ours["metrics_names"] == theirs["metrics_names"]


def test_compiled_loss_returns_keras_total_and_updates_the_loss_tracker(
    patch_supported, tensorflow
):
    import keras

    x, ys = data()
    x, ys = x[:BATCH], [y[:BATCH] for y in ys]
    totals = {}
    for on in (False, True):
        if on:
            kerasfix.enable()
        model = compile_(keras, keras2_model(keras, tensorflow), False)
        y_pred = model(x)
        total = model.compiled_loss(ys, y_pred, regularization_losses=model.losses)
        expected = model.compute_loss(y=ys, y_pred=y_pred)  # adds model.losses once
        assert float(total) == pytest.approx(float(expected), rel=RTOL)
        count = keras.ops.convert_to_numpy(model._loss_tracker.count)
        totals[on] = float(total), float(count)
    assert totals[True][0] == pytest.approx(totals[False][0], rel=RTOL)
    assert totals[False][1] == 0  # Keras updates no tracker
    assert totals[True][1] == BATCH
    assert float(model._loss_tracker.result()) == pytest.approx(totals[True][0], rel=RTOL)


def test_compiled_metrics_update_the_compiled_metrics_only(patched, tensorflow):
    import keras

    x, ys = data()
    model = compile_(keras, keras2_model(keras, tensorflow), False)
    y_pred = model(x)
    model.compiled_loss(ys, y_pred)  # builds the losses and their metrics
    model.reset_metrics()
    model.compiled_metrics.update_state(ys, y_pred)
    results = {}
    for metric in model.metrics:
        result = metric.result()
        results.update(result if isinstance(result, dict) else {metric.name: result})
    mae = np.mean(np.abs(ys[0] - keras.ops.convert_to_numpy(y_pred[0])))
    assert float(results.pop("a_mae")) == pytest.approx(mae, rel=RTOL)
    assert all(float(v) == 0 for v in results.values()), results


def keras3_model(k, tf):
    """The same model with Keras 3's own custom-step idiom."""

    class Keras3Steps(k.Model):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x, y, y_pred)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return self.compute_metrics(x, y, y_pred, None)

        def test_step(self, data):
            x, y = data
            y_pred = self(x, training=False)
            self.compute_loss(x, y, y_pred)
            return self.compute_metrics(x, y, y_pred, None)

    return build(k, Keras3Steps)


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_keras3_custom_steps_log_as_keras_builtin_steps(patched, tensorflow, run_eagerly):
    import keras

    ours = run(keras, compile_(keras, keras3_model(keras, tensorflow), run_eagerly))
    builtin = run(keras, compile_(keras, build(keras, keras.Model), run_eagerly))
    # `compute_loss` updates no `loss` tracker in Keras 3 (its built-in step
    # does); kerasfix leaves that so.
    assert list(ours["history"]) == list(builtin["history"])
    for key, values in builtin["history"].items():
        if key in ("loss", "val_loss"):
            assert ours["history"][key] == [0.0, 0.0], key
        else:
            assert ours["history"][key] == pytest.approx(values, rel=RTOL), key


def test_the_mechanism_is_on_and_the_shims_are_tensorflow_only():
    import keras

    kerasfix.enable()
    info = kerasfix.status()
    if info["mechanisms"] is None:
        pytest.skip(f"kerasfix does not patch here: {info['internals']}")
    on_tensorflow = support.backend() == "tensorflow"
    if on_tensorflow:
        assert info["mechanisms"]["keras 2 steps"] == "on"
    else:
        # Nothing is missing, so it is no `partial` either.
        assert info["mechanisms"]["keras 2 steps"].startswith(
            f"not on {support.backend()}: Keras 3 has `compiled_loss`"
        )
        assert info["effective"] == "patched"
    assert hasattr(keras.Model, "compiled_loss") == on_tensorflow
    assert hasattr(keras.Model, "compiled_metrics") == on_tensorflow


def test_a_missing_shim_switches_off_this_mechanism_only(
    patch_supported, tensorflow, monkeypatch
):
    import importlib

    import wrapt

    from kerasfix import _adapters

    base = _adapters.base_trainer(importlib.import_module(_adapters.TRAINER))
    owner, _ = _adapters.keras2_step_shims(base)
    monkeypatch.delattr(owner, "_compiled_metrics_update_state")
    with pytest.warns(kerasfix.KerasfixWarning, match="_compiled_metrics_update_state"):
        kerasfix.enable()
    mechanisms = kerasfix.status()["mechanisms"]
    assert mechanisms.pop("keras 2 steps").startswith("off:")
    assert set(mechanisms.values()) == {"on"}
    assert not isinstance(vars(owner)["compiled_loss"], wrapt.ObjectProxy)

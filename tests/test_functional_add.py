"""Symbolic `model.add_loss(tensor)` and `model.add_metric(tensor, name=...)`
on a functional model, against tf-keras (Keras 2)."""

import numpy as np
import pytest

from support import loss_is_per_batch

N, BATCH = 20, 8  # the last batch of each epoch is short (4)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = rng.integers(0, 3, size=(N,)).astype("int32")
    return x, y


def _guide_model(k, ops):
    """The Keras 2 guide's "Training & evaluation with the built-in methods"
    section on `model.add_loss` / `model.add_metric`, at a small size."""
    inputs = k.Input(shape=(6,), name="digits")
    x1 = k.layers.Dense(8, activation="relu", name="dense_1")(inputs)
    x2 = k.layers.Dense(8, activation="relu", name="dense_2")(x1)
    outputs = k.layers.Dense(3, name="predictions")(x2)
    model = k.Model(inputs=inputs, outputs=outputs)
    model.add_loss(ops.sum(x1) * 0.1)
    model.add_metric(ops.std(x1), name="std_of_activation", aggregation="mean")
    return model


def _keras_ops():
    import keras

    return keras.ops


def _tf_ops():
    import tensorflow as tf

    class Ops:  # what the guide used on Keras 2's symbolic tensors
        sum, std = staticmethod(tf.reduce_sum), staticmethod(tf.math.reduce_std)

    return Ops


def _train(k, model):
    x, y = _data()
    model.compile(
        optimizer=k.optimizers.RMSprop(1e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x[:8], y[:8])
    )
    evaluated = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    return history.history, evaluated, model.metrics_names


@pytest.mark.oracle
def test_the_keras_2_guide_logs_what_tf_keras_logs(patched):
    import keras

    tf_keras = pytest.importorskip("tf_keras")
    oracle = _guide_model(tf_keras, _tf_ops())
    model = _guide_model(keras, _keras_ops())
    model.set_weights(oracle.get_weights())
    expected = _train(tf_keras, oracle)
    got = _train(keras, model)
    # Keras 3.0-3.1 average `loss` per batch, and the last batch is short.
    skipped = ("loss", "val_loss") if loss_is_per_batch() else ()
    assert list(got[0]) == list(expected[0])
    for name in expected[0]:
        if name not in skipped:
            np.testing.assert_allclose(got[0][name], expected[0][name], rtol=1e-5, err_msg=name)
    assert list(got[1]) == list(expected[1])
    for name in expected[1]:
        if name not in skipped:
            assert got[1][name] == pytest.approx(expected[1][name], rel=1e-5), name
    assert got[2] == expected[2]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.layers[1].kernel), oracle.layers[1].kernel.numpy(), rtol=1e-5
    )


def _autoencoder(k, ops):
    """The classic functional VAE's form: the loss is `model.add_loss`'s
    alone, and `compile` gets none."""
    inputs = k.Input(shape=(6,))
    code = k.layers.Dense(2, name="encoder")(inputs)
    decoded = k.layers.Dense(6, name="decoder")(code)
    model = k.Model(inputs, decoded)
    model.add_loss(ops.mean(ops.square(inputs - decoded)) + 0.01 * ops.mean(ops.square(code)))
    return model


@pytest.mark.oracle
def test_add_loss_as_the_whole_loss_trains_and_logs_as_tf_keras(patched):
    import keras

    import support

    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    class Ops:
        mean, square = staticmethod(tf.reduce_mean), staticmethod(tf.square)

    oracle = _autoencoder(tf_keras, Ops)
    model = _autoencoder(keras, keras.ops)
    model.set_weights(oracle.get_weights())
    x, _ = _data()
    logs = []
    for k, m in ((tf_keras, oracle), (keras, model)):
        m.compile(optimizer=k.optimizers.SGD(0.1))
        history = m.fit(x, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x[:8],))
        logs.append(history.history)
    for got, expected in zip(model.get_weights(), oracle.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert list(logs[1]) == list(logs[0])
    if support.backend() == "jax":
        pytest.skip("JAX: Keras logs its own loss, weighted by batch size (README, add_loss)")
    for name in logs[0]:
        np.testing.assert_allclose(logs[1][name], logs[0][name], rtol=1e-5, err_msg=name)


def test_what_the_model_returns_and_its_layers_are_unchanged(patched):
    import keras

    model = _guide_model(keras, _keras_ops())
    x, _ = _data()
    assert [layer.name for layer in model.layers] == ["digits", "dense_1", "dense_2", "predictions"]
    assert model(x).shape == (N, 3)
    assert model.predict(x, verbose=0).shape == (N, 3)


def test_a_step_runs_the_graph_once(patched):
    import keras

    class Count(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def call(self, x):
            self.calls += 1
            return x

    count = Count()
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4)(count(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model.add_loss(keras.ops.sum(hidden) * 0.1)
    model.add_metric(keras.ops.std(hidden), name="std")
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    x, _ = _data()
    model.train_on_batch(x[:8], np.zeros((8, 3)))  # builds the model first
    before = count.calls
    logs = model.train_on_batch(x[:8], np.zeros((8, 3)), return_dict=True)
    assert count.calls - before == 1
    assert "std" in logs


def test_a_tensor_the_inputs_do_not_compute_says_what_to_do(patched):
    import keras

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    elsewhere = keras.layers.Dense(2)(keras.Input((6,)))
    with pytest.raises(ValueError, match="not computed from the inputs of model"):
        model.add_loss(keras.ops.sum(elsewhere))
    with pytest.raises(ValueError, match="not computed from the inputs of model"):
        model.add_metric(keras.ops.sum(elsewhere), name="elsewhere")
    with pytest.raises(ValueError, match="takes symbolic tensors"):
        model.add_loss(keras.ops.ones(()))
    x, y = _data()
    model.compile(optimizer="sgd", loss="mse")
    assert list(model.fit(x, np.zeros((N, 3)), verbose=0).history) == ["loss"]


def test_a_metric_without_a_name_raises_keras_2_error(patched):
    import keras

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="Please provide a name for your metric"):
        model.add_metric(keras.ops.sum(inputs))


def test_a_saved_model_is_loaded_without_them(patched, tmp_path):
    # Keras 3 has no layer kerasfix could save them as: a loaded model
    # trains on its compiled loss alone until they are added again.
    import keras

    import kerasfix

    model = _guide_model(keras, _keras_ops())
    path = tmp_path / "guide.keras"
    with pytest.warns(kerasfix.KerasfixWarning, match="leaves out what `model.add_loss\\(\\)`"):
        model.save(path)
    loaded = keras.models.load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    history = _train(keras, loaded)[0]
    assert "std_of_activation" not in history
    dense_1 = loaded.get_layer("dense_1").output
    loaded.add_metric(keras.ops.std(dense_1), name="std_of_activation")
    assert "std_of_activation" in _train(keras, loaded)[0]


def test_off_keras_own_not_implemented_error(patch_supported):
    import keras

    import kerasfix

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(NotImplementedError):
        model.add_loss(keras.ops.sum(inputs))
    kerasfix.enable()
    kerasfix.disable()
    with pytest.raises(NotImplementedError):
        model.add_loss(keras.ops.sum(inputs))

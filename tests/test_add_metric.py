"""`Layer.add_metric` inside `call()`, against tf-keras (Keras 2) and numpy."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import support

N, BATCH, EPOCHS = 20, 8, 3  # the last batch of each epoch is short (4)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 4)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")


def _vae_classes(k, ops):
    """The issue's VAE-like model in `k` (Keras 3 or tf-keras)."""

    class Encoder(k.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.z_mean = k.layers.Dense(2)
            self.z_log_var = k.layers.Dense(2)

        def call(self, x):
            z_mean, z_log_var = self.z_mean(x), self.z_log_var(x)
            kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), -1)
            self.add_loss(0.1 * ops.mean(kl))
            self.add_metric(kl, name="kl_loss")
            return z_mean  # no sampling: the oracle needs a deterministic model

    class VAE(k.Model):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.decoder = k.layers.Dense(4)

        def call(self, x):
            return self.decoder(self.encoder(x))

    return Encoder, VAE


def _keras3_vae(functional=False):
    import keras

    Encoder, VAE = _vae_classes(keras, keras.ops)
    if functional:
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(4)(Encoder()(inp)))
    model = VAE()
    model(np.zeros((1, 4), "float32"))
    return model


def _tf_keras_vae(functional=False):
    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    class Ops:  # the few ops the model uses, from TensorFlow
        sum, square, exp = staticmethod(tf.reduce_sum), staticmethod(tf.square), staticmethod(tf.exp)
        mean = staticmethod(tf.reduce_mean)

    Encoder, VAE = _vae_classes(tf_keras, Ops)
    if functional:
        inp = tf_keras.Input((4,))
        return tf_keras, tf_keras.Model(inp, tf_keras.layers.Dense(4)(Encoder()(inp)))
    model = VAE()
    model(np.zeros((1, 4), "float32"))
    return tf_keras, model


def _fit(k, model, run_eagerly=False):
    x, x_val = _data()
    model.compile(
        optimizer=k.optimizers.SGD(0.05),
        loss="mse",
        metrics=[k.metrics.MeanAbsoluteError(name="reconstruction")],
        run_eagerly=run_eagerly,
    )
    history = model.fit(
        x, x, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        validation_data=(x_val, x_val),
    )
    return history.history


@pytest.mark.oracle
@pytest.mark.parametrize("functional", [False, True], ids=["subclassed", "functional"])
@pytest.mark.parametrize("run_eagerly", [False, True], ids=["compiled", "eager"])
def test_vae_logs_what_tf_keras_logs(patched, functional, run_eagerly):
    if run_eagerly and support.backend() != "tensorflow":
        pytest.skip("run_eagerly is compared on TensorFlow only")
    tf_keras, oracle = _tf_keras_vae(functional)
    model = _keras3_vae(functional)
    weights = oracle.get_weights()
    assert [w.shape for w in weights] == [tuple(w.shape) for w in model.get_weights()]
    model.set_weights(weights)
    expected = _fit(tf_keras, oracle, run_eagerly)
    got = _fit(__import__("keras"), model, run_eagerly)
    assert set(got) == set(expected)
    for name in expected:
        if name in ("loss", "val_loss") and support.loss_is_per_batch():
            continue
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, err_msg=name)
    assert {"kl_loss", "val_kl_loss"} <= set(got)


def _batches(x, forever):
    """`(x, x)` in batches of BATCH, the last one short, once or forever."""
    while True:
        for i in range(0, len(x), BATCH):
            yield x[i : i + BATCH], x[i : i + BATCH]
        if not forever:
            return


def _mean_logger(k, mean):
    """A model whose layer logs a scalar, whose count has a fixed shape."""

    class MeanLogger(k.layers.Layer):
        def call(self, x):
            self.add_metric(mean(x), name="x_mean")
            return x

    inp = k.Input((4,))
    return k.Model(inp, k.layers.Dense(4)(MeanLogger()(inp)))


def _oracle_and_model(build):
    """`build(k, mean)` in tf-keras and in Keras 3, with the same weights."""
    import keras

    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    oracle = build(tf_keras, tf.reduce_mean)
    model = build(keras, keras.ops.mean)
    model.set_weights(oracle.get_weights())
    return (tf_keras, oracle), (keras, model)


def _fit_generators(k, model, steps_per_epoch):
    x, x_val = _data()
    model.compile(optimizer=k.optimizers.SGD(0.05), loss="mse")
    if steps_per_epoch:
        history = model.fit(
            _batches(x, True), steps_per_epoch=-(-N // BATCH), epochs=EPOCHS, verbose=0,
            validation_data=_batches(x_val, True), validation_steps=1,
        )
    else:
        history = model.fit(_batches(x, False), epochs=1, verbose=0, validation_data=_batches(x_val, False))
    return history.history, model.evaluate(_batches(x, False), verbose=0, return_dict=True)


@pytest.mark.oracle
@pytest.mark.parametrize("steps_per_epoch", [False, True], ids=["until_exhausted", "steps_per_epoch"])
def test_a_generator_counts_each_batch_once(patched, steps_per_epoch):
    # TensorFlow runs one more step that finds a generator exhausted; an
    # update that does not wait for the data counted there once more.
    import keras

    if not support.keras_counts_generator_batches():
        pytest.skip(f"Keras {keras.__version__} on {support.backend()} loses generator batches itself")

    (tf_keras, oracle), (_, model) = _oracle_and_model(_mean_logger)
    expected, expected_evaluated = _fit_generators(tf_keras, oracle, steps_per_epoch)
    got, evaluated = _fit_generators(keras, model, steps_per_epoch)
    assert list(got) == list(expected)
    for name in expected:
        if name in ("loss", "val_loss") and support.loss_is_per_batch():
            continue
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, err_msg=name)
    if support.loss_is_per_batch():
        del evaluated["loss"], expected_evaluated["loss"]
    assert evaluated == pytest.approx(expected_evaluated, rel=1e-5)


def _tracking_logger(k, mean):
    """A model whose layer tracks a `Mean` and adds a value under its name."""

    class TrackingLogger(k.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tracked = k.metrics.Mean(name="x_mean")

        def call(self, x):
            self.add_metric(mean(x), name="x_mean")
            return x

    inp = k.Input((4,))
    return k.Model(inp, k.layers.Dense(4)(TrackingLogger()(inp)))


@pytest.mark.oracle
def test_a_layers_own_metric_of_that_name_is_the_one_updated(patched):
    # Keras 2 looked the name up in the layer's metrics first.
    x, x_val = _data()
    logs = []
    for k, m in _oracle_and_model(_tracking_logger):
        m.compile(optimizer=k.optimizers.SGD(0.05), loss="mse")
        history = m.fit(x, x, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x_val, x_val))
        logs.append((history.history, m.layers[1].tracked.result()))
    (expected, expected_tracked), (got, tracked) = logs
    # tf-keras logs no `loss` for a compute_loss that skips its compiled loss.
    assert [key for key in got if key in expected] == list(expected)
    for name in ("x_mean", "val_x_mean"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, err_msg=name)
    assert float(tracked) == pytest.approx(float(expected_tracked), rel=1e-5)


def _student_classes(k, mean, step_idiom):
    """A model whose layer logs the mean of its input, trained by a custom
    `train_step` (in `step_idiom`, "tensorflow", "torch" or "jax") that may
    call a teacher model and may call the model a second time, on `x + 10`."""

    class MeanLogger(k.layers.Layer):
        def call(self, x):
            self.add_metric(mean(x), name="x_mean")
            return x

    class Student(k.Model):
        def __init__(self, teacher=None, twice=False):
            super().__init__()
            self.logger, self.dense = MeanLogger(), k.layers.Dense(4)
            self.twice = twice
            if step_idiom == "jax" and teacher is not None:
                # Untracked, so its variables stay out of the step's state
                # and it can be called as it is inside the JAX step.
                self.teacher = lambda x: teacher(x, training=False)
            else:
                self.teacher = teacher

        def call(self, x):
            return self.dense(self.logger(x))

        def _forward(self, x):
            y_pred = self(x, training=True)
            if self.teacher is not None:
                y_pred = y_pred + 0.0 * mean(self.teacher(x, training=False))
            if self.twice:
                y_pred = 0.5 * (y_pred + self(x + 10.0, training=True))
            return y_pred

        def _loss_and_updates(self, trainable, non_trainable, x, y):
            y_pred, non_trainable = self.stateless_call(trainable, non_trainable, x)
            if self.teacher is not None:
                y_pred = y_pred + 0.0 * mean(self.teacher(x))
            if self.twice:
                again, non_trainable = self.stateless_call(trainable, non_trainable, x + 10.0)
                y_pred = 0.5 * (y_pred + again)
            return self.compute_loss(x=x, y=y, y_pred=y_pred), (y_pred, non_trainable)

        def _jax_train_step(self, state, data):
            # Keras's guide's idiom: the step updates every listed metric itself.
            import jax

            trainable, non_trainable, optimizer_variables, metrics_variables = state
            x, y = data
            grad_fn = jax.value_and_grad(self._loss_and_updates, has_aux=True)
            (loss, (y_pred, non_trainable)), grads = grad_fn(trainable, non_trainable, x, y)
            trainable, optimizer_variables = self.optimizer.stateless_apply(
                optimizer_variables, grads, trainable
            )
            logs, updated = {}, []
            for metric in self.metrics:
                own = metrics_variables[len(updated) : len(updated) + len(metric.variables)]
                if metric.name == "loss":
                    own = metric.stateless_update_state(own, loss)
                else:
                    own = metric.stateless_update_state(own, y, y_pred)
                logs[metric.name] = metric.stateless_result(own)
                updated += own
            return logs, (trainable, non_trainable, optimizer_variables, updated)

        def train_step(self, *args):
            if step_idiom == "jax":
                return self._jax_train_step(*args)
            (data,) = args
            x, y = data
            if step_idiom == "torch":
                import torch

                self.zero_grad()
                y_pred = self._forward(x)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
                loss.backward()
                weights = list(self.trainable_weights)
                with torch.no_grad():
                    self.optimizer.apply([w.value.grad for w in weights], weights)
            else:
                import tensorflow as tf

                with tf.GradientTape() as tape:
                    y_pred = self._forward(x)
                    loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
                grads = tape.gradient(loss, self.trainable_variables)
                self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return self.compute_metrics(x, y, y_pred, None)

    return Student


def _own_loss_logger(k, mean, logger=None, units=4):
    """A model whose layer (`logger`, by default one that logs the mean of
    its input) calls `add_metric`, with a `compute_loss` of its own that
    calls no `super().compute_loss`."""

    class MeanLogger(k.layers.Layer):
        def call(self, x):
            self.add_metric(mean(x), name="x_mean")
            return x

    class OwnLoss(k.Model):
        def __init__(self):
            super().__init__()
            self.logger, self.dense = (logger or MeanLogger)(), k.layers.Dense(units)

        def call(self, x):
            return self.dense(self.logger(x))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
            return mean((y - y_pred) ** 2)

    return OwnLoss()


def _perceptual_loss(k, extractor, mean):
    def loss(y_true, y_pred):
        return mean((extractor(y_true) - extractor(y_pred)) ** 2)

    return loss


def _fit_pattern(k, mean, pattern, step_idiom):
    """History and evaluation of `pattern` in `k` (Keras 3 or tf-keras)."""
    x, x_val = _data()
    extractor = k.Sequential([k.Input((4,)), k.layers.Dense(3)])
    extractor.trainable = False
    loss = _perceptual_loss(k, extractor, mean) if pattern == "loss_calls_a_model" else "mse"
    if pattern == "loss_calls_a_model":
        model = _mean_logger(k, mean)
    elif pattern == "own_compute_loss":
        model = _own_loss_logger(k, mean)
        model(x[:1])
    else:
        Student = _student_classes(k, mean, step_idiom)
        teacher = extractor if pattern == "step_calls_a_teacher" else None
        model = Student(teacher=teacher, twice=pattern == "step_calls_the_model_twice")
        model(x[:1])
    model.compile(optimizer=k.optimizers.SGD(0.05), loss=loss)
    history = model.fit(
        x, x, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        validation_data=(x_val, x_val),
    )
    return history.history, model.evaluate(x, x, batch_size=BATCH, verbose=0, return_dict=True)


@pytest.mark.oracle
@pytest.mark.parametrize(
    "pattern",
    ["loss_calls_a_model", "step_calls_a_teacher", "step_calls_the_model_twice", "own_compute_loss"],
)
def test_every_call_in_a_step_is_counted_once(patched, pattern):
    # Keras 2 updated the metric where `add_metric` was called: another
    # model called in the step (by the loss or by `train_step`) loses
    # nothing, and each call of the model counts.
    import keras

    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    step_idiom = support.backend() if support.backend() in ("torch", "jax") else "tensorflow"
    expected, expected_evaluated = _fit_pattern(tf_keras, tf.reduce_mean, pattern, "tensorflow")
    got, evaluated = _fit_pattern(keras, keras.ops.mean, pattern, step_idiom)
    # tf-keras logs no `loss` for a compute_loss that skips its compiled loss.
    assert [key for key in got if key in expected] == list(expected)
    for name in ("x_mean", "val_x_mean"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, err_msg=name)
    assert evaluated["x_mean"] == pytest.approx(expected_evaluated["x_mean"], rel=1e-5)


def test_add_metric_is_listed_in_metrics_and_metrics_names(patched):
    model = _keras3_vae()
    _fit(__import__("keras"), model)
    assert [m.name for m in model.metrics][-1] == "kl_loss"
    assert model.metrics_names[-1] == "kl_loss"
    x, _ = _data()
    listed = model.evaluate(x, x, batch_size=BATCH, verbose=0)
    logs = model.evaluate(x, x, batch_size=BATCH, verbose=0, return_dict=True)
    assert dict(zip(model.metrics_names, listed)) == pytest.approx(logs)


def test_evaluate_train_on_batch_and_test_on_batch_log_it(patched):
    import keras

    x, _ = _data()
    model = _keras3_vae()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    kl = _kl_numpy(model, x)
    assert model.evaluate(x, x, batch_size=BATCH, verbose=0, return_dict=True)["kl_loss"] == pytest.approx(kl, rel=1e-5)
    assert model.test_on_batch(x, x, return_dict=True)["kl_loss"] == pytest.approx(kl, rel=1e-5)
    assert model.train_on_batch(x, x, return_dict=True)["kl_loss"] == pytest.approx(kl, rel=1e-5)


def _kl_numpy(model, x):
    import keras

    enc = model.encoder
    m = keras.ops.convert_to_numpy(enc.z_mean(x))
    lv = keras.ops.convert_to_numpy(enc.z_log_var(x))
    return float(np.mean(-0.5 * np.sum(1 + lv - m**2 - np.exp(lv), -1)))


def test_predict_takes_no_values_up(patched):
    import keras

    model = _mean_logger(keras, keras.ops.mean)
    x, _ = _data()
    model.predict(x, verbose=0)
    model.predict_on_batch(x)
    assert "x_mean" not in [m.name for m in model.metrics]


def _call_fit_call(k, model):
    """What a layer's `x_mean` reads after direct calls, `fit` and a call."""
    x, x_val = _data()
    logger = model.layers[1]

    def read():
        # Keras 3.0-3.3 layers have no `metrics`: the list it would give.
        metrics = logger.metrics if hasattr(logger, "metrics") else logger._metrics
        return [(m.name, float(m.result())) for m in metrics]

    model(x[:2])
    model(x[2:5] + 100.0)
    seen = read()
    model.compile(optimizer=k.optimizers.SGD(0.05), loss="mse")
    history = model.fit(
        x, x, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(x_val, x_val)
    ).history
    model(x[:3] - 100.0)
    return seen, history, read(), model.metrics_names


@pytest.mark.oracle
def test_direct_calls_update_the_layers_metric(patched):
    # Keras 2 kept one metric per layer and name, made at its first call,
    # updated by the user's calls too, and reset by fit at each epoch.
    expected, got = (_call_fit_call(k, m) for k, m in _oracle_and_model(_mean_logger))
    assert [name for name, _ in got[0]] == [name for name, _ in expected[0]] == ["x_mean"]
    assert got[0][0][1] == pytest.approx(expected[0][0][1], rel=1e-5)
    assert list(got[1]) == list(expected[1])
    for name in ("x_mean", "val_x_mean"):
        np.testing.assert_allclose(got[1][name], expected[1][name], rtol=1e-5, err_msg=name)
    assert got[2][0][1] == pytest.approx(expected[2][0][1], rel=1e-5)
    assert got[3] == expected[3]


def _probe(values_per_call, names):
    """A model whose layer adds `values_per_call` (functions of x) under `names`."""
    import keras

    class Probe(keras.layers.Layer):
        def call(self, x):
            for f, name in zip(values_per_call, names):
                self.add_metric(f(x), name=name)
            return x

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1)(Probe()(inp)))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


_VALUES = {
    "scalar": (lambda ops: lambda x: ops.sum(x), lambda x: [x.sum()]),
    "per_sample": (lambda ops: lambda x: ops.mean(x, axis=-1), lambda x: list(x.mean(-1))),
    "per_element": (lambda ops: lambda x: x * 2.0, lambda x: list((x * 2.0).ravel())),
}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 13),
    batch=st.integers(1, 6),
    kinds=st.lists(st.sampled_from(sorted(_VALUES)), min_size=1, max_size=3),
    shared=st.booleans(),
)
def test_aggregation_matches_keras_2_mean(patched, n, batch, kinds, shared):
    import keras

    x = np.random.default_rng(n).normal(size=(n, 3)).astype("float32")
    names = ["m"] * len(kinds) if shared else [f"m{i}" for i in range(len(kinds))]
    model = _probe([_VALUES[k][0](keras.ops) for k in kinds], names)
    logs = model.evaluate(x, np.zeros((n, 1)), batch_size=batch, verbose=0, return_dict=True)
    expected = {}
    for start in range(0, n, batch):
        xb = x[start:start + batch].astype("float64")
        for kind, name in zip(kinds, names):
            expected.setdefault(name, []).extend(_VALUES[kind][1](xb))
    for name, seen in expected.items():
        assert logs[name] == pytest.approx(np.mean(seen), rel=1e-4, abs=1e-5)


def _with_mean():
    """A layer that passes its `Mean`'s result of its input to `add_metric`."""
    import keras

    class WithMean(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.activation_mean = keras.metrics.Mean(name="activation_mean")

        def call(self, x):
            self.add_metric(self.activation_mean(x))
            return x

    return WithMean


def test_a_metric_result_is_logged_under_the_metric_name(patched):
    import keras

    x, _ = _data()
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1)(_with_mean()()(inp)))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    logs = model.evaluate(x, np.zeros((N, 1)), batch_size=BATCH, verbose=0, return_dict=True)
    assert logs["activation_mean"] == pytest.approx(float(x.mean()), rel=1e-5)
    assert [m.name for m in model.metrics].count("activation_mean") == 1


def test_a_metric_result_in_a_jax_step_of_the_models_own_says_what_to_do(patched):
    # JAX drops the Metric's updates inside the user's own step: logging
    # its result there would be a silently different number.
    import keras

    if support.backend() != "jax":
        pytest.skip("TensorFlow and torch update the Metric where it is called")

    x, _ = _data()
    model = _own_loss_logger(keras, keras.ops.mean, _with_mean(), units=1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    with pytest.raises(ValueError, match="Pass the value itself, `self.add_metric"):
        model.fit(x, np.zeros((N, 1)), batch_size=BATCH, verbose=0)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda self, x: self.add_metric(x), ValueError, "Please provide a name for your metric"),
        (lambda self, x: self.add_metric(x, name="a", aggregation="sum"), ValueError,
         "We currently support only `mean` sample-wise metric aggregation. You provided aggregation=`sum`"),
        (lambda self, x: self.add_metric(x, name="a", reduce="sum"), TypeError, "Unknown keyword arguments"),
        (lambda self, x: self.add_metric(x, name="loss"), ValueError,
         'Please provide different names for the metrics you have added. We found 2 metrics with the name: "loss"'),
    ],
    ids=["no-name", "aggregation", "keyword", "clash"],
)
def test_misuse_raises_keras_2_errors(patched, call, error, message):
    import keras

    class Bad(keras.layers.Layer):
        def call(self, x):
            call(self, x)
            return x

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1)(Bad()(inp)))
    model.compile(optimizer="sgd", loss="mse")
    x, _ = _data()
    with pytest.raises(error, match=message.replace("(", r"\(").replace("`", ".")):
        model.fit(x, np.zeros((N, 1)), verbose=0)


def test_same_name_from_two_layers_clashes(patched):
    import keras

    class Adds(keras.layers.Layer):
        def call(self, x):
            self.add_metric(keras.ops.sum(x), name="same")
            return x

    inp = keras.Input((4,))
    model = keras.Model(inp, Adds()(Adds()(inp)))
    model.compile(optimizer="sgd", loss="mse")
    x, _ = _data()
    with pytest.raises(ValueError, match='We found 2 metrics with the name: "same"'):
        model.fit(x, x, verbose=0)


def test_symbolic_add_metric_outside_a_functional_model_says_what_to_do(patched):
    import keras

    inp = keras.Input((4,))
    out = keras.layers.Dense(1)(inp)
    with pytest.raises(ValueError, match="inside a layer's `call\\(\\)`"):
        keras.layers.Dense(1).add_metric(keras.ops.sum(out), name="total")


def test_off_keras_own_not_implemented_error(patch_supported):
    import keras

    import kerasfix

    def keras_error():
        # 3.0-3.4's `add_metric(self)` takes no value: a TypeError first.
        with pytest.raises((NotImplementedError, TypeError)) as error:
            keras.layers.Dense(1).add_metric(np.zeros(1), name="x")
        return type(error.value), str(error.value)

    before = keras_error()
    kerasfix.enable()
    kerasfix.disable()
    assert keras_error() == before

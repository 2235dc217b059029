"""`model.metrics_names` names the list results, as in Keras 2."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from support import loss_is_per_batch  # noqa: E402

RNG = np.random.default_rng(5)
X = RNG.normal(size=(44, 4)).astype("float32")
YS = [RNG.normal(size=(44, 1)).astype("float32") for _ in range(2)]


def build(k, names=("alpha", "beta"), weights=None, learning_rate=0.0):
    """Two outputs named `names`, `metrics=[["mae"], ["mse"]]`."""
    k.utils.set_random_seed(0)
    inp = k.Input((4,))
    h = k.layers.Dense(6, activation="relu", name="h")(inp)
    model = k.Model(inp, [k.layers.Dense(1, name=n)(h) for n in names])
    if weights is not None:
        model.set_weights(weights)
    model.compile(
        k.optimizers.SGD(learning_rate=learning_rate),
        loss=["mse", "mse"],
        metrics=[["mae"], ["mse"]],
    )
    return model


def single_output():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1, name="alpha")(inp))
    model.compile(keras.optimizers.SGD(0.0), loss="mse", metrics=["mae", "mse"])
    return model, YS[0]


MODELS = {
    "alpha_beta": lambda: (build(keras), YS),
    "zeta_alpha": lambda: (build(keras, ("zeta", "alpha")), YS),
    "single_output": single_output,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_metrics_names_label_evaluate_and_batch_results(patched, name):
    model, y = MODELS[name]()
    as_dict = model.evaluate(X, y, batch_size=8, return_dict=True, verbose=0)
    as_list = model.evaluate(X, y, batch_size=8, verbose=0)
    assert len(model.metrics_names) == len(as_list)
    assert dict(zip(model.metrics_names, as_list)) == pytest.approx(as_dict)
    batch_y = y[:8] if name == "single_output" else [v[:8] for v in y]
    for step in (model.test_on_batch, model.train_on_batch):
        as_list = [float(v) for v in step(X[:8], batch_y)]
        # The logs those values were taken from.
        as_dict = {k: float(v) for k, v in model.get_metrics_result().items()}
        assert dict(zip(model.metrics_names, as_list)) == pytest.approx(as_dict)


@pytest.mark.oracle
@pytest.mark.parametrize("names", [("alpha", "beta"), ("zeta", "alpha")])
def test_metrics_names_and_list_results_equal_tf_keras(patched, names):
    tf_keras = pytest.importorskip("tf_keras")
    theirs = build(tf_keras, names)
    their_values = theirs.evaluate(X, YS, batch_size=8, verbose=0)
    ours = build(keras, names, theirs.get_weights())
    our_values = ours.evaluate(X, YS, batch_size=8, verbose=0)
    assert ours.metrics_names == theirs.metrics_names
    if loss_is_per_batch():
        our_values, their_values = our_values[1:], their_values[1:]
    assert our_values == pytest.approx(their_values, rel=1e-5)
    first, second = names
    assert ours.metrics_names == [
        "loss",
        f"{first}_loss",
        f"{second}_loss",
        f"{first}_mae",
        f"{second}_mse",
    ]


def test_list_results_keep_compiled_metrics_in_given_order(patched):
    """Keras 3 sorts compiled metrics by name in list results; Keras 2 kept
    them in the order given, which kerasfix restores."""
    model = build(keras, ("zeta", "alpha"))
    logs = model.evaluate(X, YS, batch_size=8, return_dict=True, verbose=0)
    values = model.evaluate(X, YS, batch_size=8, verbose=0)
    assert values == pytest.approx(
        [logs[n] for n in ("loss", "zeta_loss", "alpha_loss", "zeta_mae", "alpha_mse")]
    )
    kerasfix.disable()
    upstream = build(keras, ("zeta", "alpha"))
    logs = upstream.evaluate(X, YS, batch_size=8, return_dict=True, verbose=0)
    values = upstream.evaluate(X, YS, batch_size=8, verbose=0)
    assert values[-2:] == pytest.approx([logs["alpha_mse"], logs["zeta_mae"]])


def test_metrics_names_are_keras_own_without_kerasfix(patch_supported):
    model = build(keras)
    model.evaluate(X, YS, batch_size=8, verbose=0)
    assert model.metrics_names == [m.name for m in model.metrics]
    assert "compile_metrics" in model.metrics_names


def test_metrics_names_never_asks_a_metric_for_its_result(patched):
    """A model tracking an `R2Score`, which makes its variables on its first
    update: before that its `result()` raises, and `metrics_names` must
    not. Keras's own answer is the model's metric names."""

    class Tracking(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.r2 = keras.metrics.R2Score(name="r2")

        def call(self, x):
            return self.dense(x)

    model = Tracking()
    model.compile("sgd", "mse")
    model(X[:2])
    assert model.metrics_names == ["loss", "r2"]

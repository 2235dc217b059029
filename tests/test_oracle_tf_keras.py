"""Differential tests: Keras 3 + kerasfix against tf-keras (Keras 2) itself.

Same architecture, same initial weights, same data in the same order; every
`<out>_loss` and `val_<out>_loss` must match tf-keras epoch by epoch.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from support import keras_version, loss_is_per_batch  # noqa: E402

N = 40
RNG = np.random.default_rng(7)
X = RNG.normal(size=(N, 5)).astype("float32")
Y = {
    "a": (2 * RNG.normal(size=(N, 1))).astype("float32"),
    "b": (RNG.random((N, 1)) > 0.5).astype("float32"),
    "c": RNG.normal(size=(N, 3)).astype("float32"),
}
SW_A = np.linspace(0.2, 2.0, N).astype("float32")
SW_B = RNG.random(N).astype("float32")


@pytest.fixture
def tf_keras():
    """tf-keras (Keras 2), for the tests that compare with it; only they skip
    without it."""
    return pytest.importorskip("tf_keras")


def build(k, outputs, regularized=False):
    reg = k.regularizers.L2(0.05) if regularized else None
    inp = k.Input((5,))
    h = k.layers.Dense(6, activation="tanh", name="h", kernel_regularizer=reg)(inp)
    layers = {
        "a": k.layers.Dense(1, name="a"),
        "b": k.layers.Dense(1, activation="sigmoid", name="b"),
        "c": k.layers.Dense(3, name="c"),
    }
    return k.Model(inp, [layers[o](h) for o in outputs])


def train(k, outputs, compile_kwargs, fit_kwargs, weights=None, regularized=False):
    model = build(k, outputs, regularized)
    if weights is not None:
        model.set_weights(weights)
    initial = model.get_weights()
    model.compile(k.optimizers.SGD(learning_rate=0.05), **compile_kwargs)
    fit_kwargs = dict(fit_kwargs)
    y = [Y[o] for o in outputs]
    fit_kwargs.setdefault("validation_data", (X[:13], [v[:13] for v in y]))
    history = model.fit(
        X, y, batch_size=16, epochs=3, shuffle=False, verbose=0, **fit_kwargs
    ).history
    return initial, history


def per_output(history):
    return {k: v for k, v in history.items() if k not in ("loss", "val_loss")}


CASES = {
    "two_list": (["a", "b"], {"loss": ["mse", "binary_crossentropy"]}, {}),
    "two_list_weighted": (
        ["a", "b"],
        {"loss": ["mse", "binary_crossentropy"], "loss_weights": [0.3, 2.0]},
        {},
    ),
    "three_dict_zero_weight": (
        ["a", "b", "c"],
        {
            "loss": {"a": "mse", "b": "binary_crossentropy", "c": "mae"},
            "loss_weights": {"a": 1.0, "b": 0.0, "c": 0.5},
        },
        {},
    ),
    "three_list_output_without_loss": (
        ["a", "b", "c"],
        {"loss": {"a": "mse", "c": "mae"}},
        {},
    ),
    "three_list_none_loss": (
        ["a", "b", "c"],
        {"loss": ["mse", None, "mae"], "loss_weights": [1.0, 1.0, 0.5]},
        {},
    ),
    "per_output_sample_weight": (
        ["a", "b"],
        {"loss": ["mse", "binary_crossentropy"], "loss_weights": [1.0, 1.5]},
        {"sample_weight": [SW_A, SW_B]},
    ),
    "shared_sample_weight": (
        ["a", "b"],
        {"loss": ["mse", "binary_crossentropy"]},
        {"sample_weight": SW_A},
    ),
    "validation_split": (
        ["a", "c"],
        {"loss": ["mse", "mae"], "loss_weights": [2.0, 0.25]},
        {"validation_split": 0.25, "validation_data": None},
    ),
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", sorted(CASES))
def test_history_matches_tf_keras_epoch_by_epoch(tf_keras, name):
    outputs, compile_kwargs, fit_kwargs = CASES[name]
    if name == "three_list_none_loss" and keras_version() < (3, 5):
        pytest.skip(
            "Keras 3.0-3.4 zips a list of losses without its None entries "
            "against the outputs, training `mae` on output b; kerasfix "
            "leaves that total alone"
        )
    if fit_kwargs.get("validation_data", 0) is None:
        fit_kwargs = {k: v for k, v in fit_kwargs.items() if k != "validation_data"}
    weights, theirs = train(tf_keras, outputs, compile_kwargs, fit_kwargs)
    try:
        train(keras, outputs, compile_kwargs, fit_kwargs, weights)
    except Exception as error:
        # This Keras release rejects these compile arguments; so must
        # kerasfix, unless its compile forms give them Keras 2's meaning.
        kerasfix.enable()
        if kerasfix.status()["mechanisms"].get("compile forms") != "on":
            with pytest.raises(type(error)):
                train(keras, outputs, compile_kwargs, fit_kwargs, weights)
            pytest.skip(f"Keras {keras.__version__} rejects it: {error}")
    kerasfix.enable()
    if kerasfix.status()["effective"] != "patched":
        pytest.skip("kerasfix does not patch here")
    _, ours = train(keras, outputs, compile_kwargs, fit_kwargs, weights)
    assert set(ours) == set(theirs)
    for key, values in per_output(theirs).items():
        assert ours[key] == pytest.approx(values, rel=1e-5), key


@pytest.mark.oracle
def test_regularizer_is_in_loss_but_not_in_per_output_metrics(patched, tf_keras):
    compile_kwargs = {"loss": ["mse", "binary_crossentropy"], "loss_weights": [1.0, 2.0]}
    weights, theirs = train(
        tf_keras, ["a", "b"], compile_kwargs, {}, regularized=True
    )
    _, ours = train(
        keras, ["a", "b"], compile_kwargs, {}, weights, regularized=True
    )
    for key, values in per_output(theirs).items():
        assert ours[key] == pytest.approx(values, rel=1e-5), key
    # The total carries the L2 penalty; the per-output metrics do not.
    assert theirs["loss"][0] > theirs["a_loss"][0] + 2 * theirs["b_loss"][0]
    if not loss_is_per_batch():
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_class_weight_on_single_output_changes_nothing(patch_supported):
    def run():
        keras.utils.set_random_seed(8)
        inp = keras.Input((5,))
        model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(inp))
        model.compile("sgd", loss="binary_crossentropy")
        return model.fit(
            X, Y["b"], class_weight={0: 1.0, 1: 3.0}, batch_size=16,
            epochs=2, shuffle=False, verbose=0,
        ).history

    upstream = run()
    kerasfix.enable()
    assert run() == upstream

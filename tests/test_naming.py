"""Metric names and values against tf-keras (Keras 2) on the same model."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import kerasfix  # noqa: E402
from support import data, keras_version  # noqa: E402


def shared_layer(k):
    inp = k.Input((4,))
    shared = k.layers.Dense(1, name="shared")
    h1 = k.layers.Dense(3, name="h1")(inp)
    h2 = k.layers.Dense(3, name="h2")(inp)
    return k.Model(inp, [shared(h1), shared(h2)])


def dict_outputs(k):
    inp = k.Input((4,))
    h = k.layers.Dense(6, activation="relu", name="h")(inp)
    return k.Model(
        inp,
        {
            "score": k.layers.Dense(1, name="score_head")(h),
            "prob": k.layers.Dense(1, activation="sigmoid", name="prob_head")(h),
        },
    )


def two_outputs(k):
    inp = k.Input((4,))
    h = k.layers.Dense(6, activation="relu", name="h")(inp)
    return k.Model(
        inp, [k.layers.Dense(1, name="a")(h), k.layers.Dense(1, name="b")(h)]
    )


def subclassed(k):
    class TwoHeads(k.Model):
        def __init__(self):
            super().__init__()
            self.h = k.layers.Dense(6, activation="relu")
            self.a = k.layers.Dense(1)
            self.b = k.layers.Dense(1)

        def call(self, x):
            h = self.h(x)
            return [self.a(h), self.b(h)]

    return TwoHeads()


CASES = {
    "shared_layer": (shared_layer, ["mse", "mae"], None),
    "dict_outputs": (
        dict_outputs,
        {"score": "mse", "prob": "binary_crossentropy"},
        {"score": 0.3, "prob": 2.0},
    ),
    "none_loss": (two_outputs, ["mse", None], None),
    "subclassed_list": (subclassed, ["mse", "mse"], [1.0, 0.5]),
}


def targets(name, ya, yb):
    if name == "dict_outputs":
        return {"score": ya, "prob": yb}
    return [ya, yb]


def run(k, name, weights_from=None):
    build, loss, loss_weights = CASES[name]
    x, ya, yb, _ = data(20)
    model = build(k)
    model(x[:2])
    if weights_from is not None:
        model.set_weights(weights_from)
    model.compile(
        k.optimizers.SGD(learning_rate=0.0), loss=loss, loss_weights=loss_weights
    )
    logs = model.evaluate(
        x, targets(name, ya, yb), batch_size=16, return_dict=True, verbose=0
    )
    history = model.fit(
        x,
        targets(name, ya, yb),
        batch_size=16,
        shuffle=False,
        validation_data=(x, targets(name, ya, yb)),
        verbose=0,
    ).history
    return model.get_weights(), logs, {k: v[0] for k, v in history.items()}


def without_total(logs):
    # Keras 3.0-3.1 averages `loss` over batches regardless of their size;
    # kerasfix leaves `loss` to Keras, so it is compared from 3.2 on.
    if keras_version() >= (3, 2):
        return logs
    return {k: v for k, v in logs.items() if k not in ("loss", "val_loss")}


@pytest.mark.oracle
@pytest.mark.parametrize("name", sorted(CASES))
def test_names_and_values_equal_tf_keras(patch_supported, name):
    weights, theirs, their_history = run(tf_keras, name)
    try:
        run(keras, name, weights_from=weights)
    except Exception as error:
        # This Keras rejects the model's compile arguments; so must kerasfix.
        kerasfix.enable()
        with pytest.raises(type(error)):
            run(keras, name, weights_from=weights)
        pytest.skip(f"Keras {keras.__version__} rejects it (so does kerasfix): {str(error)[:100]}")
    kerasfix.enable()
    _, ours, our_history = run(keras, name, weights_from=weights)
    assert set(ours) == set(theirs)
    assert without_total(ours) == pytest.approx(without_total(theirs), rel=1e-5)
    assert set(our_history) == set(their_history)
    assert without_total(our_history) == pytest.approx(
        without_total(their_history), rel=1e-5
    )

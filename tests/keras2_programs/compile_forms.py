"""Keras 2's shorthand for a model with several outputs: one loss for all
with a list of `loss_weights`, one metric list for every output, a
`sample_weight` dict keyed by output name in `fit` and `evaluate`, and the
model compiled again to train one head, with a loss dict and targets naming
that head alone (Keras 3 rejects all of it)."""

import types

import numpy as np
from tensorflow import keras

import _program

rng = np.random.default_rng(4)
x = rng.normal(size=(22, 4)).astype("float32")
ya = (rng.normal(size=(22, 1)) * 3).astype("float32")
yb = rng.normal(size=(22, 1)).astype("float32")
wa = np.linspace(0.5, 1.5, 22).astype("float32")

inputs = keras.Input((4,))
h = keras.layers.Dense(8, activation="tanh")(inputs)
a = keras.layers.Dense(1, name="a")(h)
b = keras.layers.Dense(1, name="b")(h)
model = keras.Model(inputs, [a, b])
_program.same_start(model)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.02),
    loss="mse",
    loss_weights=[0.5, 2.0],
    metrics=["mae", "mse"],
    weighted_metrics=["mae"],
)
first = model.fit(
    x[:16], [ya[:16], yb[:16]], sample_weight={"a": wa[:16]},
    validation_data=(x[16:], [ya[16:], yb[16:]], {"a": wa[16:]}),
    epochs=2, batch_size=5, shuffle=False, verbose=0,
)

# Fine-tune head `a` alone: no loss, no metric and no targets for `b`.
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.02), loss={"a": "mae"})
history = model.fit(
    x[:16], {"a": ya[:16]}, validation_data=(x[16:], {"a": ya[16:]}),
    epochs=2, batch_size=5, shuffle=False, verbose=0,
)
evaluated = model.evaluate(x[16:], {"a": ya[16:]}, batch_size=4, verbose=0)
# Both fits' logs, the second's keys marked.
both = {**first.history, **{f"then {k}": v for k, v in history.history.items()}}
_program.report(keras, model, types.SimpleNamespace(history=both), evaluated)

"""A functional model with two named outputs, a loss and metrics per output
and `loss_weights`: Keras 2's own compile form, which kerasfix already
reports as Keras 2 did."""

import numpy as np
from tensorflow import keras

import _program

rng = np.random.default_rng(2)
x = rng.normal(size=(22, 4)).astype("float32")
ya = (rng.normal(size=(22, 1)) * 3).astype("float32")
yb = (rng.random((22, 1)) > 0.5).astype("float32")

inputs = keras.Input((4,))
h = keras.layers.Dense(8, activation="relu")(inputs)
a = keras.layers.Dense(1, name="a")(h)
b = keras.layers.Dense(1, activation="sigmoid", name="b")(h)
model = keras.Model(inputs, [a, b])
_program.same_start(model)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.01),
    loss=["mse", "binary_crossentropy"],
    loss_weights=[0.5, 2.0],
    metrics={"a": "mae", "b": "accuracy"},
)

history = model.fit(
    x[:16], [ya[:16], yb[:16]], validation_data=(x[16:], [ya[16:], yb[16:]]),
    epochs=2, batch_size=5, shuffle=False, verbose=0,
)
evaluated = model.evaluate(x[16:], [ya[16:], yb[16:]], batch_size=4, verbose=0)
_program.report(keras, model, history, evaluated)

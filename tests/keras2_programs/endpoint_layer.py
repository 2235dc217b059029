"""keras-io's endpoint layer pattern: a layer adds a scalar loss of its own
with `add_loss` next to the loss compiled for the model's output."""

import numpy as np
from tensorflow import keras

import _program


class LogisticEndpoint(keras.layers.Layer):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    def call(self, targets, logits):
        self.add_loss(0.5 * self.loss_fn(targets, logits))
        return logits


rng = np.random.default_rng(1)
x = rng.normal(size=(22, 4)).astype("float32")
targets = (rng.random((22, 1)) > 0.5).astype("float32")
y = rng.normal(size=(22, 1)).astype("float32")

inputs = keras.Input((4,), name="inputs")
target = keras.Input((1,), name="targets")
h = keras.layers.Dense(8, activation="relu")(inputs)
logits = keras.layers.Dense(1, name="logits")(h)
output = LogisticEndpoint(name="predictions")(target, logits)
model = keras.Model([inputs, target], output)
_program.same_start(model)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse", metrics=["mae"]
)

history = model.fit(
    [x[:16], targets[:16]], y[:16],
    validation_data=([x[16:], targets[16:]], y[16:]),
    epochs=2, batch_size=5, shuffle=False, verbose=0,
)
evaluated = model.evaluate([x[16:], targets[16:]], y[16:], batch_size=4, verbose=0)
_program.report(keras, model, history, evaluated)

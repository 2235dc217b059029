"""The Keras 2 custom-`fit` idiom (keras-io "Customizing what happens in
`fit()`"): `compiled_loss` inside a GradientTape, `compiled_metrics`, and
every metric of `self.metrics` returned, in `train_step` and `test_step`,
on a two-output model with `loss_weights`."""

import numpy as np
import tensorflow as tf
from tensorflow import keras

import _program


class CustomFit(keras.Model):
    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compiled_loss(y, y_pred, regularization_losses=self.losses)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.compiled_metrics.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data
        y_pred = self(x, training=False)
        self.compiled_loss(y, y_pred, regularization_losses=self.losses)
        self.compiled_metrics.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


rng = np.random.default_rng(3)
x = rng.normal(size=(22, 4)).astype("float32")
ya = (rng.normal(size=(22, 1)) * 3).astype("float32")
yb = rng.normal(size=(22, 1)).astype("float32")

inputs = keras.Input((4,))
h = keras.layers.Dense(8, activation="relu")(inputs)
a = keras.layers.Dense(1, name="a")(h)
b = keras.layers.Dense(1, name="b")(h)
model = CustomFit(inputs, [a, b])
_program.same_start(model)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.01),
    loss=["mse", "mae"],
    loss_weights=[0.5, 2.0],
    metrics={"a": ["mae"]},
)

history = model.fit(
    x[:16], [ya[:16], yb[:16]], validation_data=(x[16:], [ya[16:], yb[16:]]),
    epochs=2, batch_size=5, shuffle=False, verbose=0,
)
evaluated = model.evaluate(x[16:], [ya[16:], yb[16:]], batch_size=4, verbose=0)
_program.report(keras, model, history, evaluated)

"""keras-io's captcha OCR: a `CTCLayer` endpoint adds a per-sample CTC loss
of shape (batch, 1) with `add_loss`; the model is compiled with an optimizer
only, so `add_loss` is its whole loss."""

import numpy as np
import tensorflow as tf
from tensorflow import keras

import _program


def ctc_batch_cost(y_true, y_pred):
    batch = tf.shape(y_pred)[0]
    loss = tf.nn.ctc_loss(
        labels=tf.cast(y_true, tf.int32),
        logits=tf.math.log(y_pred + 1e-7),
        label_length=tf.fill([batch], tf.shape(y_true)[1]),
        logit_length=tf.fill([batch], tf.shape(y_pred)[1]),
        logits_time_major=False,
        blank_index=-1,
    )
    return tf.expand_dims(loss, 1)


class CTCLayer(keras.layers.Layer):
    def call(self, y_true, y_pred):
        self.add_loss(ctc_batch_cost(y_true, y_pred))
        return y_pred


rng = np.random.default_rng(0)
images = rng.normal(size=(20, 8, 6)).astype("float32")
labels = rng.integers(0, 4, size=(20, 3)).astype("float32")

image = keras.Input((8, 6), name="image")
label = keras.Input((3,), name="label")
h = keras.layers.Dense(16, activation="relu")(image)
probs = keras.layers.Dense(5, activation="softmax", name="dense2")(h)
output = CTCLayer(name="ctc_loss")(label, probs)
model = keras.Model([image, label], output)
_program.same_start(model)
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01))

data = {"image": images[:14], "label": labels[:14]}
validation = {"image": images[14:], "label": labels[14:]}
history = model.fit(
    data, validation_data=(validation,), epochs=2, batch_size=4,
    shuffle=False, verbose=0,
)
evaluated = model.evaluate(validation, batch_size=4, verbose=0)
_program.report(keras, model, history, evaluated)

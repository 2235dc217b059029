"""What `add_metric` costs a training step, measured; prints figures and goals.

    KERAS_BACKEND=jax python benchmarks/add_metric.py [--rounds 150 --steps 50]

In one process, two subclassed models with the same layers, called the
same way, take turns training, `--steps` steps per turn for `--rounds`
turns. Both log two values of their output (its mean, one scalar per step,
and its per-sample squared norm):

- add_metric: the output layer calls `self.add_metric(...)` twice (kerasfix
  on), with Keras's own `train_step`;
- keras3: the Keras 3 way, two `Mean` trackers updated in a custom
  `train_step` written for this backend (which updates the `loss` tracker
  as Keras's own step does, so both log the same);
- unlogged (for reference, no goal): the same model logging nothing, with
  Keras's own `train_step`.

Step times are measured as `_turns.py` says; the goal is judged on the
ratio of the median step times. A Python loss function counts how often
each model's step is traced; on TensorFlow the ops of both traced steps are
compared too.
"""

import argparse
import json
import os
import platform
import statistics
import sys

import _turns

FEATURES, HIDDEN, BATCH = 64, 512, 128


def main(argv=None):
    parser = argparse.ArgumentParser(description="kerasfix add_metric overhead")
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)

    import numpy as np

    import kerasfix

    kerasfix.enable()
    import keras
    from keras import ops

    backend = keras.config.backend()
    traces = {"add_metric": 0, "keras3": 0, "unlogged": 0}

    class Head(keras.layers.Layer):
        """The output layer; with `log`, it logs two values of its output."""

        def __init__(self, log, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(1)
            self.log = log

        def call(self, h):
            y = self.dense(h)
            if self.log:
                self.add_metric(ops.mean(y), name="activation")
                self.add_metric(ops.sum(ops.square(y), axis=-1), name="norm")
            return y

    class Net(keras.Model):
        """The same layers, called the same way, in both models."""

        def __init__(self, log, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(HIDDEN, activation="relu")
            self.head = Head(log)

        def call(self, x):
            return self.head(self.hidden(x))

    class Keras3(Net):
        """Two trackers updated in a custom train_step, per backend."""

        def __init__(self, **kwargs):
            super().__init__(False, **kwargs)
            self.activation = keras.metrics.Mean(name="activation")
            self.norm = keras.metrics.Mean(name="norm")

        def _log(self, y_pred):
            self.activation.update_state(ops.mean(y_pred))
            self.norm.update_state(ops.sum(ops.square(y_pred), axis=-1))

        if backend == "tensorflow":

            def train_step(self, data):
                import tensorflow as tf

                x, y = data
                with tf.GradientTape() as tape:
                    y_pred = self(x, training=True)
                    loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
                grads = tape.gradient(loss, self.trainable_variables)
                self.optimizer.apply(grads, self.trainable_variables)
                self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
                self._log(y_pred)
                return self.compute_metrics(x, y, y_pred)

        elif backend == "torch":

            def train_step(self, data):
                x, y = data
                self.zero_grad()
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
                loss.backward()
                variables = self.trainable_weights
                self.optimizer.apply([v.value.grad for v in variables], variables)
                self._loss_tracker.update_state(loss.detach(), sample_weight=x.shape[0])
                self._log(y_pred.detach())
                return self.compute_metrics(x, y, y_pred)

        else:

            def train_step(self, state, data):
                import jax

                trainable, non_trainable, opt_vars, metric_vars = state
                x, y = data

                def loss_fn(trainable):
                    y_pred, nt = self.stateless_call(trainable, non_trainable, x)
                    loss, _ = self.stateless_compute_loss(
                        trainable, nt, metric_vars, x=x, y=y, y_pred=y_pred
                    )
                    return loss, (y_pred, nt)

                (loss, (y_pred, nt)), grads = jax.value_and_grad(
                    loss_fn, has_aux=True
                )(trainable)
                trainable, opt_vars = self.optimizer.stateless_apply(
                    opt_vars, grads, trainable
                )
                mapping = list(zip(self.metrics_variables, metric_vars))
                with keras.StatelessScope(state_mapping=mapping) as scope:
                    self._loss_tracker.update_state(loss, sample_weight=x.shape[0])
                    self._log(y_pred)
                    logs = self.compute_metrics(x, y, y_pred)
                metric_vars = [scope.get_current_value(v) for v in self.metrics_variables]
                return logs, (trainable, nt, opt_vars, metric_vars)

    def counted(name):
        def mse(y_true, y_pred):
            traces[name] += 1
            return ops.mean(ops.square(y_true - y_pred), axis=-1)

        return mse

    def model(name):
        keras.utils.set_random_seed(0)
        m = Keras3() if name == "keras3" else Net(name == "add_metric")
        m.compile(keras.optimizers.SGD(0.01), loss=counted(name))
        return m

    rng = np.random.default_rng(0)
    n = BATCH * args.steps
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")

    def fit(m, callbacks=()):
        return m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    def step_ops(m):
        """The ops of `m`'s traced train step, by type (TensorFlow)."""
        import collections

        import tensorflow as tf

        specs = (tf.TensorSpec((BATCH, FEATURES)), tf.TensorSpec((BATCH, 1)))
        graph = tf.function(m.train_step).get_concrete_function(specs).graph
        return dict(sorted(collections.Counter(op.type for op in graph.get_operations()).items()))

    names = ["keras3", "add_metric", "unlogged"]
    models = {name: model(name) for name in names}
    logged = {name: sorted(fit(m).history) for name, m in models.items()}
    first_traces = dict(traces)
    steps, medians = _turns.take_turns(models, args.rounds, fit)
    median = {name: statistics.median(t) * 1e3 for name, t in steps.items()}
    ratio, quartiles = _turns.ratio(steps, medians, "add_metric", "keras3")
    traced = dict(traces)  # step_ops below traces each step once more
    limit = 1.05 if backend == "torch" else 1.02
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "keras": keras.__version__,
        "backend": backend,
        "median_step_ms": {k: round(v, 3) for k, v in median.items()},
        "add_metric/keras3": round(ratio, 4),
        "add_metric/keras3 per round, quartiles": [round(q, 4) for q in quartiles],
        "logged": logged,
        "traces": traced,
    }
    if backend == "tensorflow":
        report["step_graph_ops"] = {name: step_ops(m) for name, m in models.items()}
    print(json.dumps(report, indent=1))
    goals = [
        (f"add_metric/keras3 <= {limit}", ratio <= limit),
        ("both log activation and norm", logged["add_metric"] == logged["keras3"]),
        ("same number of traces", traced["add_metric"] == traced["keras3"]),
        ("no retracing after the first turn", traced == first_traces or backend == "torch"),
    ]
    if backend == "tensorflow":
        graphs = report["step_graph_ops"]
        goals.append(("same ops in both step graphs", graphs["add_metric"] == graphs["keras3"]))
    for goal, met in goals:
        print(f"{'met ' if met else 'MISSED'}  {goal}")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Keras 2's order everywhere: list results, `metrics_names`, dict results,
`History` and callbacks' logs, checked against tf-keras (Keras 2)."""

import threading

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from support import loss_is_per_batch  # noqa: E402

N, BATCH = 12, 8  # the last batch of an epoch is short
RNG = np.random.default_rng(11)
X = RNG.normal(size=(N, 4)).astype("float32")
YS = [RNG.normal(size=(N, 1)).astype("float32") for _ in range(2)]
SW = [np.linspace(0.5, 2.0, N).astype("float32"), RNG.random(N).astype("float32")]

# name: (output layer names, or None for the subclassed model; compile arguments)
SETUPS = {
    # As tf-keras's metrics_correctness_test: per output, its metrics, then
    # its weighted metrics (Keras 3 lists all metrics, then all weighted ones).
    "metrics_and_weighted_metrics": (
        ("zeta", "alpha"),
        {"metrics": [["mse"], ["mse"]], "weighted_metrics": [["mse"], ["mse"]]},
    ),
    "dict_metrics": (("a", "b"), {"metrics": {"a": ["mae", "mse"], "b": ["mae"]}}),
    # Keras 2 walks the outputs, not the dict's keys.
    "dict_metrics_keys_not_in_output_order": (
        ("zeta", "alpha"),
        {"metrics": {"alpha": ["mae"], "zeta": ["mae", "mse"]}},
    ),
    "list_metrics": (("zeta", "alpha"), {"metrics": [["mae", "mse"], ["mae"]]}),
    "subclassed_with_add_metric": (
        None,
        {"metrics": [["mae"], ["mse"]], "weighted_metrics": [["mae"], ["mse"]]},
    ),
}

# What tf-keras 2.21 reports for each setup, in `metrics_names`, in every
# dict result and in every log (epoch logs: then the same with `val_`).
KERAS2_ORDER = {
    "metrics_and_weighted_metrics": [
        "loss", "zeta_loss", "alpha_loss",
        "zeta_mse", "zeta_weighted_mse", "alpha_mse", "alpha_weighted_mse",
    ],
    "dict_metrics": ["loss", "a_loss", "b_loss", "a_mae", "a_mse", "b_mae"],
    "dict_metrics_keys_not_in_output_order": [
        "loss", "zeta_loss", "alpha_loss", "zeta_mae", "zeta_mse", "alpha_mae",
    ],
    "list_metrics": ["loss", "zeta_loss", "alpha_loss", "zeta_mae", "zeta_mse", "alpha_mae"],
    "subclassed_with_add_metric": [
        "loss", "output_1_loss", "output_2_loss",
        "output_1_mae", "output_1_weighted_mae", "output_2_mse", "output_2_weighted_mse",
        "hmean",
    ],
}

# The only names that differ between tf-keras and Keras 3 (3.0 to 3.16) in
# these setups: Keras 3 names a subclassed model's compiled metrics without
# their output, and kerasfix leaves compiled metrics' names alone.
KERAS3_NAMES = {
    "output_1_mae": "mae",
    "output_1_weighted_mae": "weighted_mae",
    "output_2_mse": "mse",
    "output_2_weighted_mse": "weighted_mse",
}


def _mean(k):
    if k is keras:
        return keras.ops.mean
    import tensorflow as tf

    return tf.reduce_mean


def subclassed(k):
    mean = _mean(k)

    class TwoHeads(k.Model):
        def __init__(self):
            super().__init__()
            self.hidden = k.layers.Dense(6, activation="relu")
            self.first = k.layers.Dense(1)
            self.second = k.layers.Dense(1)

        def call(self, x):
            h = self.hidden(x)
            self.add_metric(mean(h), name="hmean")
            return [self.first(h), self.second(h)]

    model = TwoHeads()
    model(X[:1])
    return model


def functional(k, names):
    inp = k.Input((4,))
    h = k.layers.Dense(6, activation="relu", name="h")(inp)
    return k.Model(inp, [k.layers.Dense(1, name=n)(h) for n in names])


def build(k, setup):
    """The setup's model in `k` (Keras 3 or tf-keras), with the same weights
    in both."""
    names, metric_kwargs = SETUPS[setup]
    model = subclassed(k) if names is None else functional(k, names)
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    # Learning rate 0: train_on_batch called twice reports the same numbers.
    model.compile(k.optimizers.SGD(learning_rate=0.0), loss=["mse", "mse"], **metric_kwargs)
    return model


def floats(logs):
    return {name: float(v) for name, v in logs.items()}


def recorder(k):
    class Logs(k.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(("train_batch", floats(logs)))

        def on_test_batch_end(self, batch, logs=None):
            self.seen.append(("test_batch", floats(logs)))

        def on_test_end(self, logs=None):
            self.seen.append(("test_end", floats(logs)))

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(("epoch", floats(logs)))

    return Logs()


def run(k, model):
    """Everything the model reports, as it reports it."""
    out = {}
    kwargs = {"sample_weight": SW, "batch_size": BATCH, "verbose": 0}
    out["evaluate"] = [float(v) for v in model.evaluate(X, YS, **kwargs)]
    out["evaluate_dict"] = floats(model.evaluate(X, YS, return_dict=True, **kwargs))
    out["metrics_names"] = list(model.metrics_names)
    batch = (X[:BATCH], [y[:BATCH] for y in YS])
    batch_sw = [w[:BATCH] for w in SW]
    for step in ("test_on_batch", "train_on_batch"):
        # Keras 3.0-3.6 do not reset the metrics in these calls (3.15 and
        # tf-keras do): here each call reports one batch.
        model.reset_metrics()
        out[step] = [float(v) for v in getattr(model, step)(*batch, sample_weight=batch_sw)]
        model.reset_metrics()
        out[step + "_dict"] = floats(
            getattr(model, step)(*batch, sample_weight=batch_sw, return_dict=True)
        )
    logs = recorder(k)
    history = model.fit(
        X, YS, validation_data=(X, YS, SW), epochs=2, shuffle=False,
        callbacks=[logs], **kwargs,
    ).history
    out["history"] = {name: [float(v) for v in values] for name, values in history.items()}
    out["logs"] = logs.seen
    return out


_RUNS = {}


def keras3_run(setup):
    """`run` of the setup in Keras 3 with kerasfix on, made once."""
    if setup not in _RUNS:
        _RUNS[setup] = run(keras, build(keras, setup))
    return _RUNS[setup]


def comparable(names, other):
    """`names` with those that `other` does not use blanked out, so two
    orders compare position by position where both name a value alike."""
    return [n if n in other else "?" for n in names]


def assert_same_order(ours, theirs, label):
    ours, theirs = list(ours), list(theirs)
    assert comparable(ours, theirs) == comparable(theirs, ours), label


def assert_same_values(ours, theirs, names, label):
    """Position by position; `names` are tf-keras's for those positions."""
    keep = [
        i for i, n in enumerate(names)
        # Keras 3.0-3.1 average `loss` over batches whatever their size.
        if not (loss_is_per_batch() and n in ("loss", "val_loss"))
    ]
    ours, theirs = list(ours), list(theirs)
    assert [ours[i] for i in keep] == pytest.approx([theirs[i] for i in keep], rel=1e-5), label


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_results_and_logs_follow_keras2_order(patched, setup):
    out = keras3_run(setup)
    names = out["metrics_names"]
    expected = [n if n in names else KERAS3_NAMES.get(n, n) for n in KERAS2_ORDER[setup]]
    assert names == expected
    val_names = ["val_" + n for n in names]
    assert list(out["evaluate_dict"]) == names
    assert dict(zip(names, out["evaluate"])) == pytest.approx(out["evaluate_dict"])
    for step in ("test_on_batch", "train_on_batch"):
        assert list(out[step + "_dict"]) == names, step
        assert dict(zip(names, out[step])) == pytest.approx(out[step + "_dict"]), step
    assert list(out["history"]) == names + val_names
    for event, logs in out["logs"]:
        assert list(logs) == (names + val_names if event == "epoch" else names), event


@pytest.mark.oracle
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_results_and_logs_equal_tf_keras(patched, setup):
    tf_keras = pytest.importorskip("tf_keras")
    theirs = run(tf_keras, build(tf_keras, setup))
    ours = keras3_run(setup)
    their_names = theirs["metrics_names"]
    assert their_names == KERAS2_ORDER[setup]
    assert_same_order(ours["metrics_names"], their_names, "metrics_names")
    for result in ("evaluate", "test_on_batch", "train_on_batch"):
        assert len(ours[result]) == len(theirs[result]), result
        assert_same_values(ours[result], theirs[result], their_names, result)
        as_dict = result + "_dict"
        assert_same_order(ours[as_dict], theirs[as_dict], as_dict)
        assert_same_values(
            ours[as_dict].values(), theirs[as_dict].values(), their_names, as_dict
        )
    assert_same_order(ours["history"], theirs["history"], "history")
    for epoch in range(2):
        assert_same_values(
            [v[epoch] for v in ours["history"].values()],
            [v[epoch] for v in theirs["history"].values()],
            list(theirs["history"]),
            f"history, epoch {epoch}",
        )
    assert [e for e, _ in ours["logs"]] == [e for e, _ in theirs["logs"]]
    for (event, our_logs), (_, their_logs) in zip(ours["logs"], theirs["logs"]):
        assert_same_order(our_logs, their_logs, event)
        assert_same_values(our_logs.values(), their_logs.values(), list(their_logs), event)


def test_batch_logs_follow_keras2_order_when_keras_runs_callbacks_in_threads(patched):
    # Keras 3.6+ runs the batch-end hooks in a thread pool when every callback
    # says it is `async_safe`: the logs it hands them are in order too.
    seen = []

    class Threaded(keras.callbacks.Callback):
        async_safe = True

        def on_train_batch_end(self, batch, logs=None):
            seen.append((threading.current_thread() is threading.main_thread(), list(logs)))

        def on_test_batch_end(self, batch, logs=None):
            self.on_train_batch_end(batch, logs)

    callback = Threaded()
    model = build(keras, "metrics_and_weighted_metrics")
    in_threads = getattr(keras.callbacks.CallbackList([callback], model=model), "_async_train", False)
    model.fit(X, YS, validation_data=(X, YS), epochs=1, batch_size=BATCH, verbose=0,
              callbacks=[callback])
    assert len(seen) == 4
    assert [keys for _, keys in seen] == [model.metrics_names] * 4
    assert any(not main for main, _ in seen) == in_threads


def test_batch_logs_follow_the_order_of_a_model_compiled_again(patched):
    # kerasfix remembers each batch's order per CallbackList; one kept by
    # the user across a compile with the same names in another order.
    logs = recorder(keras)
    model = build(keras, "list_metrics")
    callbacks = keras.callbacks.CallbackList([logs], add_history=True, model=model)
    orders = []
    for metrics in ([["mae", "mse"], ["mae"]], [["mse", "mae"], ["mae"]]):
        model.compile("sgd", loss=["mse", "mse"], metrics=metrics)
        model.fit(X, YS, epochs=1, batch_size=BATCH, verbose=0, callbacks=callbacks)
        orders.append((model.metrics_names, [list(seen) for _, seen in logs.seen]))
        logs.seen.clear()
    assert orders[0][0] != orders[1][0]
    for names, seen in orders:
        assert seen == [names] * 3  # two batches, then the epoch


def test_keras_own_order_without_kerasfix(patch_supported):
    model = build(keras, "metrics_and_weighted_metrics")
    model.evaluate(X, YS, sample_weight=SW, batch_size=BATCH, verbose=0)
    assert model.metrics_names == [m.name for m in model.metrics]

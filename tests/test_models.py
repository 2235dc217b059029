"""Real models: what fit, evaluate and the *_on_batch methods report."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from support import (  # noqa: E402
    backend,
    data,
    frozen_sgd,
    keras_version,
    raw_losses,
    three_outputs,
    two_outputs,
)

LOSSES = {"a": "mse", "b": "binary_crossentropy"}
WEIGHTS = [0.5, 3.0]
EAGER = [False, True] if backend() == "tensorflow" else [False]


def compiled(run_eagerly=False, optimizer="sgd", weights=WEIGHTS):
    model = two_outputs()
    model.compile(
        optimizer,
        loss=list(LOSSES.values()),
        loss_weights=weights,
        run_eagerly=run_eagerly,
    )
    return model


def targets(ya, yb):
    return {"a": ya, "b": yb}


@pytest.mark.parametrize("run_eagerly", EAGER)
def test_evaluate_reports_raw_losses_with_partial_last_batch(
    patched, run_eagerly
):
    x, ya, yb, _ = data(20)
    model = compiled(run_eagerly)
    logs = model.evaluate(x, [ya, yb], batch_size=16, return_dict=True, verbose=0)
    raw = raw_losses(model, x, targets(ya, yb), LOSSES)
    assert logs["a_loss"] == pytest.approx(raw["a"], rel=1e-5)
    assert logs["b_loss"] == pytest.approx(raw["b"], rel=1e-5)


@pytest.mark.parametrize("run_eagerly", EAGER)
def test_fit_history_matches_recomputed_losses(patched, run_eagerly):
    x, ya, yb, _ = data(20)
    xv, yav, ybv, _ = data(13, seed=5)
    model = compiled(run_eagerly, optimizer=frozen_sgd())
    history = model.fit(
        x,
        [ya, yb],
        batch_size=16,
        epochs=2,
        shuffle=False,
        validation_data=(xv, [yav, ybv]),
        verbose=0,
    ).history
    raw = raw_losses(model, x, targets(ya, yb), LOSSES)
    val = raw_losses(model, xv, targets(yav, ybv), LOSSES)
    for out in "ab":
        assert history[f"{out}_loss"] == pytest.approx([raw[out]] * 2, rel=1e-5)
        assert history[f"val_{out}_loss"] == pytest.approx(
            [val[out]] * 2, rel=1e-5
        )


@pytest.mark.parametrize("run_eagerly", EAGER)
def test_train_and_test_on_batch_report_raw_losses(patched, run_eagerly):
    x, ya, yb, _ = data(12)
    model = compiled(run_eagerly, optimizer=frozen_sgd())
    raw = raw_losses(model, x, targets(ya, yb), LOSSES)
    for method in (model.train_on_batch, model.test_on_batch):
        logs = method(x, [ya, yb], return_dict=True)
        assert logs["a_loss"] == pytest.approx(raw["a"], rel=1e-5)
        assert logs["b_loss"] == pytest.approx(raw["b"], rel=1e-5)


@pytest.mark.parametrize("run_eagerly", EAGER)
def test_total_loss_is_bit_identical_to_upstream(patch_supported, run_eagerly):
    x, ya, yb, _ = data(20)
    upstream = compiled(run_eagerly).evaluate(
        x, [ya, yb], batch_size=16, return_dict=True, verbose=0
    )
    kerasfix.enable()
    ours = compiled(run_eagerly).evaluate(
        x, [ya, yb], batch_size=16, return_dict=True, verbose=0
    )
    assert ours["loss"] == upstream["loss"]


@pytest.mark.skipif(backend() != "tensorflow", reason="only TensorFlow traces steps into graphs it keeps")
def test_step_traces_keep_no_initializers_for_kerasfix_metrics(patch_supported):
    """kerasfix makes its per-output Means outside the traced step, where
    Keras makes its own variables: a variable made while a step is traced
    leaves a conditional initializer in the trace TensorFlow keeps (at 64
    outputs, some 38,000 more live objects for every garbage collection)."""
    import tensorflow as tf

    def traced_functions(function, seen):
        if isinstance(function, tf.types.experimental.PolymorphicFunction):
            yield function
            return
        for cell in getattr(function, "__closure__", None) or ():
            value = cell.cell_contents
            if callable(value) and id(value) not in seen:
                seen.add(id(value))
                yield from traced_functions(value, seen)

    def initializers():
        x, ya, yb, _ = data(20)
        model = compiled()
        model.fit(x, [ya, yb], batch_size=16, epochs=1, verbose=0)
        model.evaluate(x, [ya, yb], batch_size=16, verbose=0)
        found = [
            f
            for step in (model.train_function, model.test_function)
            for f in traced_functions(step, set())
        ]
        assert found, "no tf.function found in Keras's train and test functions"
        graphs = [c.graph for f in found for c in f._list_all_concrete_functions()]
        return sum(
            op.type == "VarIsInitializedOp"
            for graph in graphs
            for op in graph.get_operations()
        ) + sum(
            node.op == "VarIsInitializedOp"
            for graph in graphs
            for function in graph.as_graph_def().library.function
            for node in function.node_def
        )

    upstream = initializers()
    kerasfix.enable()
    assert initializers() == upstream


def test_weighted_mode_reports_loss_times_weight(patched):
    kerasfix.enable(mode="weighted")
    x, ya, yb, _ = data(20)
    model = compiled()
    logs = model.evaluate(x, [ya, yb], batch_size=16, return_dict=True, verbose=0)
    raw = raw_losses(model, x, targets(ya, yb), LOSSES)
    assert logs["a_loss"] == pytest.approx(0.5 * raw["a"], rel=1e-5)
    assert logs["b_loss"] == pytest.approx(3.0 * raw["b"], rel=1e-5)


def test_without_kerasfix_keras_reports_its_own_numbers():
    """Disabled, every release behaves as upstream: the numbers kerasfix
    exists to change are still wrong here."""
    x, ya, yb, _ = data(20)
    model = compiled()
    logs = model.evaluate(x, [ya, yb], batch_size=16, return_dict=True, verbose=0)
    raw = raw_losses(model, x, targets(ya, yb), LOSSES)
    version = keras_version()
    if version < (3, 5):
        assert "a_loss" not in logs and "b_loss" not in logs
    elif version < (3, 7):
        assert logs["a_loss"] != pytest.approx(raw["a"], rel=1e-3)
        full = model.evaluate(x, [ya, yb], batch_size=20, return_dict=True, verbose=0)
        assert full["a_loss"] == pytest.approx(0.5 * raw["a"], rel=1e-5)
    elif backend() == "tensorflow":
        assert logs["a_loss"] != pytest.approx(raw["a"], rel=1e-3)
    else:
        assert logs["a_loss"] == pytest.approx(raw["a"], rel=1e-5)


@pytest.mark.skipif(keras_version() >= (3, 5), reason="Keras 3.5+ reports val_a_loss")
def test_without_kerasfix_early_stopping_on_output_loss_raises_or_never_stops():
    """The README's first table, Keras 3.0-3.4: in mode "auto" EarlyStopping
    raises; with mode="min" it warns that val_a_loss is missing and never stops."""
    x, ya, yb, _ = data(20)
    model = compiled(optimizer=frozen_sgd())
    fit = lambda stop: model.fit(  # noqa: E731
        x, [ya, yb], validation_data=(x, [ya, yb]), epochs=5, callbacks=[stop], verbose=0
    ).history
    with pytest.raises(ValueError, match="maximized or minimized"):
        fit(keras.callbacks.EarlyStopping(monitor="val_a_loss", patience=0))
    with pytest.warns(UserWarning, match="val_a_loss"):
        history = fit(keras.callbacks.EarlyStopping(monitor="val_a_loss", mode="min", patience=0))
    assert len(history["loss"]) == 5 and "val_a_loss" not in history


def test_early_stopping_monitors_val_output_loss(patched):
    x, ya, yb, _ = data(20)
    model = compiled(optimizer=frozen_sgd())
    # Keras 3 cannot infer the direction of `<output>_loss` in mode "auto"
    # (with or without kerasfix); Keras 2 assumed "min".
    stop = keras.callbacks.EarlyStopping(
        monitor="val_a_loss", mode="min", patience=0
    )
    history = model.fit(
        x,
        [ya, yb],
        validation_data=(x, [ya, yb]),
        epochs=5,
        callbacks=[stop],
        verbose=0,
    ).history
    assert len(history["val_a_loss"]) == 2


def test_single_output_model_reports_keras_values_in_keras2_order(patch_supported):
    """A single-output model gets no loss metrics: every value it reports is
    Keras's own, in Keras 2's order (which for its list results is Keras
    3's too). The metrics are given out of name order, so a reordering
    either way shows."""
    x, ya, _, _ = data(20)

    def run():
        keras.utils.set_random_seed(3)
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.Dense(1, name="a")(inp))
        model.compile("sgd", loss="mse", metrics=["mse", "mae"])
        seen = {"metrics_names after compile": list(model.metrics_names)}
        history = model.fit(
            x, ya, batch_size=16, epochs=2, shuffle=False,
            validation_data=(x[:12], ya[:12]), verbose=0,
        ).history
        seen["History keys"] = list(history)
        seen["History"] = history
        as_dict = model.evaluate(x, ya, batch_size=16, return_dict=True, verbose=0)
        seen["evaluate(return_dict=True) keys"] = list(as_dict)
        seen["evaluate(return_dict=True)"] = as_dict
        seen["evaluate()"] = model.evaluate(x, ya, batch_size=16, verbose=0)
        seen["metrics_names after evaluate"] = list(model.metrics_names)
        seen["test_on_batch()"] = model.test_on_batch(x[:8], ya[:8])
        seen["train_on_batch()"] = model.train_on_batch(x[:8], ya[:8])
        seen["metrics_names after train_on_batch"] = list(model.metrics_names)
        return seen

    def exact(value):
        """Type and value, lists and dicts in their order, floats exact."""
        if isinstance(value, dict):
            return ("dict", [(k, exact(v)) for k, v in value.items()])
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, [exact(v) for v in value])
        if isinstance(value, str):
            return value
        return (type(value).__name__, float(np.asarray(value)))

    upstream = run()
    # Guards against a vacuous comparison: Keras's own results carry the
    # loss and both metrics, validation included.
    assert len(upstream["evaluate()"]) == 3
    assert sorted(upstream["History keys"]) == [
        "loss", "mae", "mse", "val_loss", "val_mae", "val_mse"
    ]
    kerasfix.enable()
    ours = run()
    # Values are Keras's own, name for name; names and their order are
    # Keras 2's (`test_order.py` checks that order against tf-keras).
    keras2 = ["loss", "mse", "mae"]
    expected = dict(
        upstream,
        **{
            "metrics_names after compile": ["loss"],  # compiled metrics unbuilt
            "metrics_names after evaluate": keras2,
            "metrics_names after train_on_batch": keras2,
            "History keys": keras2 + [f"val_{k}" for k in keras2],
            "History": {k: upstream["History"][k] for k in keras2 + [f"val_{k}" for k in keras2]},
            "evaluate(return_dict=True) keys": keras2,
            "evaluate(return_dict=True)": {
                k: upstream["evaluate(return_dict=True)"][k] for k in keras2
            },
            "evaluate()": [upstream["evaluate(return_dict=True)"][k] for k in keras2],
        },
    )
    # Keras 3.0-3.1 return a single output's list in another order: the
    # batch results are compared as values, their order by evaluate()'s.
    for key in ("test_on_batch()", "train_on_batch()"):
        ours[key], expected[key] = sorted(map(float, ours[key])), sorted(map(float, expected[key]))
    changed = {
        key: {"expected": expected[key], "kerasfix": ours[key]}
        for key in upstream
        if exact(ours[key]) != exact(expected[key])
    }
    assert changed == {}


def test_three_outputs_dict_losses_with_zero_weight(patched):
    x, ya, yb, yc = data(20)
    model = three_outputs()
    losses = {"a": "mse", "b": "binary_crossentropy", "c": "mae"}
    model.compile(
        frozen_sgd(), loss=losses, loss_weights={"a": 0.0, "b": 1.0, "c": 2.5}
    )
    ys = {"a": ya, "b": yb, "c": yc}
    logs = model.evaluate(x, ys, batch_size=8, return_dict=True, verbose=0)
    raw = raw_losses(model, x, ys, losses)
    for out in "abc":
        assert logs[f"{out}_loss"] == pytest.approx(raw[out], rel=1e-5)


def test_per_output_sample_weights(patched):
    x, ya, yb, _ = data(20)
    sw = {
        "a": np.linspace(0.0, 2.0, 20).astype("float32"),
        "b": np.linspace(1.0, 0.5, 20).astype("float32"),
    }
    model = compiled(optimizer=frozen_sgd())
    logs = model.evaluate(
        x,
        [ya, yb],
        sample_weight=[sw["a"], sw["b"]],
        batch_size=16,
        return_dict=True,
        verbose=0,
    )
    raw = raw_losses(model, x, targets(ya, yb), LOSSES, sample_weight=sw)
    assert logs["a_loss"] == pytest.approx(raw["a"], rel=1e-5)
    assert logs["b_loss"] == pytest.approx(raw["b"], rel=1e-5)

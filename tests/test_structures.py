"""Output structures walked in Keras's own order: each name on its output's
value, checked against losses recomputed from `predict`."""

import collections
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from kerasfix import _config, _loss_metrics  # noqa: E402
from support import frozen_sgd, keras_version, raw_loss  # noqa: E402

compile_utils = pytest.importorskip("keras.src.trainers.compile_utils")

N = 20
RNG = np.random.default_rng(11)
X = RNG.normal(size=(N, 4)).astype("float32")
Pair = collections.namedtuple("Pair", "zeta alpha")


def evaluate_against_predict(model, y, losses, flat):
    """Evaluates; returns (logs, {name: raw loss from predict}). `flat` maps
    each metric name to a function picking its target and prediction."""
    model.compile(frozen_sgd(), loss=losses)
    logs = model.evaluate(X, y, batch_size=N, return_dict=True, verbose=0)
    preds = model.predict(X, batch_size=N, verbose=0)
    raw = {name: raw_loss(loss, *pick(y, preds)) for name, (loss, pick) in flat.items()}
    return logs, raw


def assert_reported(logs, raw):
    for name, value in raw.items():
        assert logs[f"{name}_loss"] == pytest.approx(value, rel=1e-5), name


def _zeta_alpha_model():
    """Outputs in an OrderedDict whose insertion order is not sorted."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((4,))
    outputs = collections.OrderedDict(
        [("zeta", keras.layers.Dense(1, name="zeta")(inp)),
         ("alpha", keras.layers.Dense(2, name="alpha")(inp))]
    )
    return keras.Model(inp, outputs)


def test_ordered_dict_outputs_total_is_keras_own(patched):
    # What is trained on stays Keras's own, even where Keras 3.3-3.4 and 3.7
    # pair an OrderedDict's outputs with other targets: kerasfix once copied
    # it into a plain dict, which Keras flattens sorted.
    model = _zeta_alpha_model()
    rng = np.random.default_rng(3)
    y = collections.OrderedDict(
        [("zeta", 3 * rng.normal(size=(N, 1)).astype("float32")),
         ("alpha", rng.normal(size=(N, 2)).astype("float32"))]
    )
    losses = collections.OrderedDict([("zeta", "mse"), ("alpha", "mae")])

    def total():
        model.compile(frozen_sgd(), loss=losses)
        return model.evaluate(X, y, batch_size=N, return_dict=True, verbose=0)["loss"]

    on = total()
    patched.disable()
    try:
        off = total()
    finally:
        patched.enable()
    assert on == pytest.approx(off, rel=1e-6)


def test_ordered_dict_outputs_keep_insertion_order(patched):
    model = _zeta_alpha_model()
    y = collections.OrderedDict(
        [("zeta", 3 * RNG.normal(size=(N, 1)).astype("float32")),
         ("alpha", RNG.normal(size=(N, 2)).astype("float32"))]
    )
    losses = collections.OrderedDict([("zeta", "mse"), ("alpha", "mae")])
    flat = {k: (losses[k], lambda y, p, k=k: (y[k], p[k])) for k in losses}
    logs, raw = evaluate_against_predict(model, y, losses, flat)
    assert raw["zeta"] != pytest.approx(raw["alpha"], rel=1e-2)
    if logs["loss"] != pytest.approx(raw["zeta"] + raw["alpha"], rel=1e-5):
        # Keras 3.3-3.4 itself pairs these outputs with the wrong targets.
        assert logs["loss"] == pytest.approx(logs["zeta_loss"] + logs["alpha_loss"])
        pytest.skip(f"Keras {keras.__version__} trains an OrderedDict model on "
                    "other targets than `predict` pairs it with")
    assert_reported(logs, raw)


def nested_model():
    keras.utils.set_random_seed(2)
    inp = keras.Input((4,))
    return keras.Model(
        inp,
        {"head": {"zeta": keras.layers.Dense(1, name="zeta")(inp),
                  "beta": keras.layers.Dense(1, name="beta")(inp)},
         "alpha": keras.layers.Dense(2, name="alpha")(inp)},
    )


def test_nested_dict_outputs(patched):
    y = {"head": {"zeta": 3 * RNG.normal(size=(N, 1)).astype("float32"),
                  "beta": RNG.normal(size=(N, 1)).astype("float32")},
         "alpha": RNG.normal(size=(N, 2)).astype("float32")}
    losses = {"head": {"zeta": "mse", "beta": "mae"}, "alpha": "huber"}
    flat = {
        "zeta": ("mse", lambda y, p: (y["head"]["zeta"], p["head"]["zeta"])),
        "beta": ("mae", lambda y, p: (y["head"]["beta"], p["head"]["beta"])),
        "alpha": ("huber", lambda y, p: (y["alpha"], p["alpha"])),
    }
    try:
        logs, raw = evaluate_against_predict(nested_model(), y, losses, flat)
    except (ValueError, TypeError) as error:
        kerasfix.disable()
        with pytest.raises(type(error)):
            evaluate_against_predict(nested_model(), y, losses, flat)
        pytest.skip(f"Keras {keras.__version__} rejects nested dict outputs: {str(error)[:100]}")
    assert_reported(logs, raw)


class NamedPair(keras.Model):
    """A subclassed model returning a namedtuple whose fields are not sorted."""

    def __init__(self):
        super().__init__()
        self.zeta = keras.layers.Dense(1)
        self.alpha = keras.layers.Dense(2)

    def call(self, x):
        return Pair(self.zeta(x), self.alpha(x))


def test_namedtuple_outputs(patched):
    keras.utils.set_random_seed(3)
    model = NamedPair()
    y = Pair(3 * RNG.normal(size=(N, 1)).astype("float32"),
             RNG.normal(size=(N, 2)).astype("float32"))
    losses = ["mse", "mae"]
    flat = {
        "output_1": ("mse", lambda y, p: (y[0], p[0])),
        "output_2": ("mae", lambda y, p: (y[1], p[1])),
    }
    try:
        logs, raw = evaluate_against_predict(model, y, losses, flat)
    except (ValueError, TypeError, KeyError) as error:
        kerasfix.disable()
        with pytest.raises(type(error)):
            evaluate_against_predict(NamedPair(), y, losses, flat)
        pytest.skip(f"Keras {keras.__version__} rejects namedtuple losses: {str(error)[:100]}")
    assert_reported(logs, raw)


def absolute(y_true, y_pred):
    return keras.ops.abs(y_true - y_pred)


def test_zero_dimensional_outputs_count_once_per_call(patched):
    compile_loss = compile_utils.CompileLoss(
        [absolute, absolute], None, output_names=["a", "b"]
    )
    values = [(1.0, 4.0, 0.5, 3.0), (2.0, 1.0, 2.5, 0.0)]
    for ya, pa, yb, pb in values:
        compile_loss(
            [np.float32(ya), np.float32(yb)], [np.float32(pa), np.float32(pb)]
        )
    metrics = {m.name: float(m.result()) for m in compile_loss.metrics}
    assert metrics == pytest.approx({"a_loss": 2.0, "b_loss": 2.5})


def test_unmatched_output_is_named_by_its_loss_and_said_once(patched):
    compile_loss = compile_utils.CompileLoss(["mse", "mse"], None, output_names=["a", "b"])
    y = [np.ones((4, 1), "float32"), np.zeros((4, 1), "float32")]
    compile_loss(y, y)
    _config._warned.clear()
    stranger = np.ones((4, 1), "float32")
    records = [(0, 0.0, y[0], False), (1, 0.0, stranger, False)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            made = _loss_metrics._make_metrics(
                compile_loss, _loss_metrics._adapter, y, records, "unweighted"
            )
    said = [w for w in caught if "could not tell which output" in str(w.message)]
    assert [m.name for m in made] == ["a_loss", "output_2_loss"]
    assert len(said) == 1 and "loss 2 of 2" in str(said[0].message)
    assert said[0].category is kerasfix.KerasfixWarning


@pytest.mark.skipif(
    keras_version() >= (3, 5), reason="kerasfix builds CompileLoss itself on 3.0-3.4"
)
@pytest.mark.parametrize("built", [False, True])
def test_symbolic_build_reads_one_batch_and_hands_it_to_keras(patch_supported, built):
    """Keras reads one batch when the model, its metrics or its optimizer is
    unbuilt; kerasfix hands Keras the batch it reads, so one batch is read
    in all, namedtuple data included. kerasfix reads one where Keras reads
    none (everything built but CompileLoss, as in a loaded model): its
    `add_metric` metrics and its loss metrics are made on it."""
    Batch = collections.namedtuple("Batch", "x y")

    class Counting:
        def __init__(self):
            self.reads = 0

        def enumerate_epoch(self):
            while True:
                self.reads += 1
                yield 0, [Batch(X[:8], (X[:8, :1], X[:8, 1:2]))]

    def reads():
        keras.utils.set_random_seed(0)
        inp = keras.Input((4,))
        model = keras.Model(inp, [keras.layers.Dense(1)(inp), keras.layers.Dense(1)(inp)])
        optimizer = keras.optimizers.SGD()
        if built:
            model(X[:2])
            optimizer.build(model.trainable_variables)
        model.compile(optimizer, loss=["mse", "mae"])
        iterator = Counting()
        model._symbolic_build(iterator=iterator)
        return iterator.reads, model._compile_loss.built

    upstream, _ = reads()
    kerasfix.enable()
    ours, compile_loss_built = reads()
    assert upstream == (0 if built else 1)
    assert ours == 1
    assert compile_loss_built


def test_two_losses_on_one_output_get_name_and_name_1(patched):
    """One tensor returned twice, a loss on each: `b_loss` and `b_1_loss`."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((4,))
    a = keras.layers.Dense(1, name="a")(inp)
    b = keras.layers.Dense(1, name="b")(inp)
    model = keras.Model(inp, [a, b, b])
    ya = 3 * RNG.normal(size=(N, 1)).astype("float32")
    yb = RNG.normal(size=(N, 1)).astype("float32")
    losses = ["mse", "mse", "mae"]
    flat = {
        "a": ("mse", lambda y, p: (y[0], p[0])),
        "b": ("mse", lambda y, p: (y[1], p[1])),
        "b_1": ("mae", lambda y, p: (y[2], p[2])),
    }
    logs, raw = evaluate_against_predict(model, [ya, yb, yb], losses, flat)
    assert {k for k in logs if k != "loss"} == {"a_loss", "b_loss", "b_1_loss"}
    assert_reported(logs, raw)


def pair_loss(y_true, y_pred):
    """One loss over two outputs at once (Keras 3 only)."""
    ops = keras.ops
    return ops.mean(ops.square(y_true["p"] - y_pred["p"])) + ops.mean(
        ops.abs(y_true["q"] - y_pred["q"])
    )


def pair_model():
    keras.utils.set_random_seed(5)
    inp = keras.Input((4,))
    return keras.Model(inp, {
        "pair": {"p": keras.layers.Dense(1, name="p")(inp),
                 "q": keras.layers.Dense(1, name="q")(inp)},
        "y": keras.layers.Dense(1, name="y")(inp),
    })


def test_loss_over_several_outputs_keeps_keras_3_name(patched):
    y = {"pair": {"p": RNG.normal(size=(N, 1)).astype("float32"),
                  "q": RNG.normal(size=(N, 1)).astype("float32")},
         "y": RNG.normal(size=(N, 1)).astype("float32")}
    losses = {"pair": pair_loss, "y": "mse"}
    flat = {"pair": (pair_loss, lambda y, p: (y["pair"], p["pair"])),
            "y": ("mse", lambda y, p: (y["y"], p["y"]))}
    try:
        logs, raw = evaluate_against_predict(pair_model(), y, losses, flat)
    except (ValueError, TypeError, KeyError) as error:
        kerasfix.disable()
        with pytest.raises(type(error)):
            evaluate_against_predict(pair_model(), y, losses, flat)
        pytest.skip(f"Keras {keras.__version__} has no loss over several outputs: {str(error)[:100]}")
    assert {k for k in logs if k != "loss"} == {"pair_loss", "y_loss"}
    assert_reported(logs, raw)

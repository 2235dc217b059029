"""Metric names and values against tf-keras (Keras 2) on the same model."""

import warnings

import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from support import data, keras_version, loss_is_per_batch  # noqa: E402


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
    if not loss_is_per_batch():
        return logs
    return {k: v for k, v in logs.items() if k not in ("loss", "val_loss")}


@pytest.fixture
def tf_keras():
    """tf-keras (Keras 2), for the tests that compare with it; only they skip
    without it."""
    return pytest.importorskip("tf_keras")


@pytest.mark.oracle
@pytest.mark.parametrize("name", sorted(CASES))
def test_names_and_values_equal_tf_keras(patch_supported, tf_keras, name):
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


def age_gender(k):
    inp = k.Input((4,))
    return k.Model(
        inp,
        {
            "age": k.layers.Dense(1, name="dense_age")(inp),
            "gender": k.layers.Dense(1, name="dense_gender")(inp),
        },
    )


def fit_history(build, loss, y, k=keras):
    """`fit`'s history (validation included); raises what `fit` raises."""
    x = data(20)[0]
    model = build(k)
    model.compile(k.optimizers.SGD(learning_rate=0.0), loss=loss)
    return model.fit(x, y, batch_size=16, validation_data=(x, y), verbose=0).history


def logged_names(build, loss, y, k=keras):
    """The per-output loss names `fit` logs (validation included); raises
    what `fit` raises, so an error with kerasfix on fails the test."""
    history = fit_history(build, loss, y, k)
    return sorted(n for n in history if n not in ("loss", "val_loss"))


def keras_own_names(build, loss, y):
    """What this Keras itself logs, kerasfix off: the per-output loss names,
    or the type of the error it raises for these compile arguments."""
    assert kerasfix.status()["effective"] != "patched"
    try:
        return logged_names(build, loss, y)
    except Exception as error:
        return type(error)


def age_gender_targets():
    _, ya, yb, _ = data(20)
    return {"age": ya, "gender": yb}


def skip_where_keras_trains_nothing(build, loss, y, mode):
    """Skips where Keras itself, with kerasfix off, rejects these compile
    arguments (after checking that kerasfix in `mode` raises the same error)
    or trains nothing (`loss` exactly 0.0: Keras 3.0-3.4 for a functional
    model with dict outputs given one loss). Decided by Keras alone, never
    by a run with kerasfix on; leaves kerasfix off."""
    assert kerasfix.status()["effective"] != "patched"
    try:
        history = fit_history(build, loss, y)
    except Exception as error:
        kerasfix.enable(mode=mode)
        with pytest.raises(type(error)):
            fit_history(build, loss, y)
        kerasfix.disable()
        pytest.skip(
            f"Keras {keras.__version__} rejects this loss (so does kerasfix): "
            f"{type(error).__name__}: {str(error)[:100]}"
        )
    if history["loss"][0] == 0.0 and history["val_loss"][0] == 0.0:
        pytest.skip(
            f"Keras {keras.__version__} computes no loss at all (loss 0.0) "
            "for this model and loss"
        )


AGE_GENDER_LOSSES = {"dict": {"age": "mse", "gender": "mse"}, "one": "mse"}


@pytest.mark.parametrize("loss", sorted(AGE_GENDER_LOSSES))
def test_weighted_mode_names_outputs_by_dict_key_as_keras_3_6(patch_supported, loss):
    args = (age_gender, AGE_GENDER_LOSSES[loss], age_gender_targets())
    skip_where_keras_trains_nothing(*args, mode="weighted")
    kerasfix.enable(mode="weighted")
    names = logged_names(*args)
    assert names == ["age_loss", "gender_loss", "val_age_loss", "val_gender_loss"]


@pytest.mark.oracle
@pytest.mark.parametrize("loss", sorted(AGE_GENDER_LOSSES))
def test_unweighted_mode_keeps_keras2_layer_names(patch_supported, tf_keras, loss):
    args = (age_gender, AGE_GENDER_LOSSES[loss], age_gender_targets())
    skip_where_keras_trains_nothing(*args, mode="unweighted")
    kerasfix.enable()
    names = logged_names(*args)
    assert names == logged_names(*args, k=tf_keras) == [
        "dense_age_loss",
        "dense_gender_loss",
        "val_dense_age_loss",
        "val_dense_gender_loss",
    ]


def test_weighted_mode_never_shares_a_metric(patch_supported):
    kerasfix.enable(mode="weighted")
    _, ya, yb, _ = data(20)
    names = logged_names(shared_layer, ["mse", "mae"], [ya, yb])
    assert names == ["shared_1_loss", "shared_loss", "val_shared_1_loss", "val_shared_loss"]


WEIGHTED_CASES = {
    "age_gender": (age_gender, "mse", age_gender_targets()),
    **{
        name: (build, loss, targets(name, *data(20)[1:3]))
        for name, (build, loss, _) in CASES.items()
    },
}


@pytest.mark.skipif(
    not (3, 5) <= keras_version() < (3, 7), reason="Keras 3.5-3.6 is the reference"
)
@pytest.mark.parametrize("name", sorted(WEIGHTED_CASES))
def test_weighted_mode_logs_the_names_keras_3_6_logs(patch_supported, name):
    """Keras 3.6's own names, except that two outputs never share one."""
    build, loss, y = WEIGHTED_CASES[name]
    theirs = keras_own_names(build, loss, y)
    kerasfix.enable(mode="weighted")
    if isinstance(theirs, type):
        with pytest.raises(theirs):
            logged_names(build, loss, y)
        return
    ours = logged_names(build, loss, y)
    # Where Keras gives two outputs one name (and logs one value), kerasfix
    # names the second `<name>_1`.
    assert set(theirs) <= set(ours)
    for extra in set(ours) - set(theirs):
        base, suffix = extra[: -len("_loss")].rsplit("_", 1)
        assert suffix.isdigit() and f"{base}_loss" in theirs


def test_renamed_metrics_warn_once_per_model_with_the_mapping(patch_supported):
    y = age_gender_targets()
    loss = AGE_GENDER_LOSSES["one"]
    keras_own = keras_own_names(age_gender, loss, y)
    if isinstance(keras_own, type):
        pytest.skip(f"Keras {keras.__version__} raises {keras_own.__name__} for this model")
    kerasfix.enable()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged_names(age_gender, loss, y)  # fit and validation: one model
        logged_names(age_gender, loss, y)
    renamed = [w for w in caught if issubclass(w.category, kerasfix.KerasfixWarning)]
    if "age_loss" not in keras_own:
        assert renamed == []  # this Keras logs no per-output loss of its own
        return
    assert len(renamed) == 2
    assert "age_loss -> dense_age_loss, gender_loss -> dense_gender_loss" in str(
        renamed[0].message
    )

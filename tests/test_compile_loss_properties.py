"""Hypothesis properties of the patched `CompileLoss`, called directly.

P1 the total is bit-identical to unpatched Keras; P2 each metric is the
batch-size-weighted mean of that output's raw loss; P3 in "weighted" mode it
is raw x weight; P4 the weighted metrics add up to the mean total. P1 and P4
run in both modes, and an exception is a pass only where unpatched Keras
raises the same one.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from support import keras_version, raw_loss  # noqa: E402

compile_utils = pytest.importorskip("keras.src.trainers.compile_utils")

NAMES = ("mse", "mae", "huber", "log_cosh")
WEIGHTS = (0.0, -1.5, 0.25, 1.0, 7.0, 1e3)


def plain_abs(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)


class ScaledSquare(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return 0.5 * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


def make_loss(kind):
    """A fresh loss of `kind`; `raw_loss` computes the same value."""
    if kind is None:
        return None
    if kind in NAMES:
        return kind
    return {
        "instance": keras.losses.MeanSquaredError,
        "function": lambda: plain_abs,
        "subclass": ScaledSquare,
    }[kind]()


@st.composite
def cases(draw):
    n = draw(st.integers(1, 5))
    structure = draw(st.sampled_from(["list", "dict", "nested"]))
    kinds = draw(
        st.lists(
            st.sampled_from(NAMES + ("instance", "function", "subclass", None)),
            min_size=n,
            max_size=n,
        )
    )
    assume(any(k is not None for k in kinds))
    weights = draw(
        st.none()
        | st.lists(
            st.sampled_from(WEIGHTS) | st.none(), min_size=n, max_size=n
        )
    )
    sample_weights = draw(st.sampled_from(["none", "shared", "per_output"]))
    dims = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    batches = draw(st.lists(st.integers(1, 64), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**16))
    return dict(
        structure=structure,
        kinds=kinds,
        weights=weights,
        sample_weights=sample_weights,
        dims=dims,
        batches=batches,
        seed=seed,
    )


def keys(case):
    n = len(case["kinds"])
    if case["structure"] == "nested":
        return [(f"g{i % 2}", f"o{i}") for i in range(n)]
    return [(f"o{i}",) for i in range(n)]


def pack(case, values):
    """Arranges one value per output in the case's structure."""
    if case["structure"] == "list":
        return list(values)
    packed = {}
    for path, value in zip(keys(case), values):
        node = packed
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return packed


def names(case):
    """Each output's name, which names its metric."""
    return [path[-1] for path in keys(case)]


def flat_order(case):
    """Output indices in `keras.tree.flatten` order (dict keys sorted)."""
    order = range(len(case["kinds"]))
    if case["structure"] == "list":
        return list(order)
    return sorted(order, key=lambda i: keys(case)[i])


def batches(case):
    rng = np.random.default_rng(case["seed"])
    for size in case["batches"]:
        y_true = [rng.normal(size=(size, d)).astype("float32") for d in case["dims"]]
        y_pred = [rng.normal(size=(size, d)).astype("float32") for d in case["dims"]]
        if case["sample_weights"] == "none":
            sw = [None] * len(y_true)
        elif case["sample_weights"] == "shared":
            sw = [rng.random(size).astype("float32")] * len(y_true)
        else:
            sw = [rng.random(size).astype("float32") for _ in y_true]
        yield size, y_true, y_pred, sw


def run(case, patched, mode="unweighted"):
    """Totals per batch and metric results, or the exception raised."""
    if patched:
        kerasfix.enable(mode)
    else:
        kerasfix.disable()
    losses = pack(case, [make_loss(k) for k in case["kinds"]])
    weights = None if case["weights"] is None else pack(case, case["weights"])
    compile_loss = compile_utils.CompileLoss(
        losses, weights, output_names=[names(case)[i] for i in flat_order(case)]
    )
    totals = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _, y_true, y_pred, sw in batches(case):
                if case["sample_weights"] == "none":
                    weights_arg = None
                elif case["sample_weights"] == "shared":
                    weights_arg = sw[0]
                else:
                    weights_arg = pack(case, sw)
                total = compile_loss(
                    pack(case, y_true), pack(case, y_pred), weights_arg
                )
                totals.append(
                    None if total is None else keras.ops.convert_to_numpy(total)
                )
    except Exception as error:  # compared with upstream's own error
        event(f"{case['structure']}: raises {type(error).__name__}")
        return type(error), None
    metrics = {}
    if patched:
        metrics = {m.name: float(m.result()) for m in compile_loss.metrics}
    return totals, metrics


def expected(case):
    """{metric name: (batch-weighted raw mean, weight)}, from raw values."""
    sums, count = {}, 0
    for size, y_true, y_pred, sw in batches(case):
        count += size
        for i, kind in enumerate(case["kinds"]):
            if kind is None:
                continue
            raw = raw_loss(make_loss(kind), y_true[i], y_pred[i], sw[i])
            sums[names(case)[i]] = sums.get(names(case)[i], 0.0) + size * raw
    weights = case["weights"] or [None] * len(case["kinds"])
    return {
        f"{name}_loss": (total / count, 1.0 if w is None else w)
        for (name, total), w in zip(
            sums.items(),
            [w for w, k in zip(weights, case["kinds"]) if k is not None],
        )
    }


def upstream_misaligns(case):
    # Keras 3.0-3.4 drops None from a list of losses before zipping it with
    # the outputs, so later losses land on the wrong output (left alone).
    return (
        keras_version() < (3, 5)
        and case["structure"] == "list"
        and None in case["kinds"]
    )


def upstream_drops_losses(case):
    # Keras 3.5-3.6 leaves out of the total every loss past the number of
    # non-None losses; kerasfix restores them (tested on its own below).
    kinds = [case["kinds"][i] for i in flat_order(case)]
    kept = sum(k is not None for k in kinds)
    return (
        (3, 5) <= keras_version() < (3, 7)
        and len(kinds) > 1
        and any(k is not None for k in kinds[kept:])
    )


SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@SETTINGS
@given(cases(), st.sampled_from(["unweighted", "weighted"]))
def test_total_is_bit_identical_to_upstream(patch_supported, case, mode):
    """P1."""
    assume(not upstream_drops_losses(case))
    upstream, _ = run(case, patched=False)
    ours, _ = run(case, patched=True, mode=mode)
    if isinstance(upstream, type):
        assert ours is upstream
        return
    assert len(ours) == len(upstream)
    for mine, theirs in zip(ours, upstream):
        if theirs is None:
            assert mine is None
        else:
            np.testing.assert_array_equal(mine, theirs)


@SETTINGS
@given(cases(), st.sampled_from(["unweighted", "weighted"]))
def test_metrics_equal_batch_weighted_raw_losses(patch_supported, case, mode):
    """P2 (unweighted) and P3 (weighted)."""
    assume(not upstream_misaligns(case))
    totals, metrics = run(case, patched=True, mode=mode)
    if isinstance(totals, type):
        upstream, _ = run(case, patched=False)
        assert upstream is totals  # only where Keras itself raises it
        return
    want = expected(case)
    if len(case["kinds"]) < 2:
        assert metrics == {}
        return
    if mode == "weighted":
        # Named as Keras 3.6 named them (tests/test_naming.py); the same
        # metrics in the same order as unweighted mode's Keras 2 names.
        _, keras2_named = run(case, patched=True)
        metrics = dict(zip(keras2_named, metrics.values()))
    assert set(metrics) == set(want)
    for name, (raw, weight) in want.items():
        value = raw * weight if mode == "weighted" else raw
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-5)


@SETTINGS
@given(cases(), st.sampled_from(["unweighted", "weighted"]))
def test_weighted_metrics_add_up_to_mean_total(patch_supported, case, mode):
    """P4: what the `loss` metric (mean total by batch size) would show."""
    assume(not upstream_misaligns(case) and len(case["kinds"]) > 1)
    totals, metrics = run(case, patched=True, mode=mode)
    if isinstance(totals, type):
        upstream, _ = run(case, patched=False)
        assert upstream is totals  # only where Keras itself raises it
        return
    sizes = case["batches"]
    mean_total = sum(s * float(t) for s, t in zip(sizes, totals)) / sum(sizes)
    want = expected(case)
    if mode == "weighted":  # raw x weight already, under Keras 3.6's names
        weighted_sum = sum(metrics.values())
    else:
        weighted_sum = sum(metrics[name] * w for name, (_, w) in want.items())
    assert weighted_sum == pytest.approx(mean_total, rel=1e-4, abs=1e-3)


@pytest.mark.skipif(
    not (3, 5) <= keras_version() < (3, 7), reason="Keras 3.5-3.6 only"
)
def test_none_loss_no_longer_drops_later_losses_on_3_5_and_3_6():
    case = dict(
        structure="list",
        kinds=["mse", None, "mae"],
        weights=[0.5, 1.0, 2.0],
        sample_weights="none",
        dims=[1, 1, 2],
        batches=[16, 4],
        seed=3,
    )
    upstream, _ = run(case, patched=False)
    with pytest.warns(kerasfix.KerasfixWarning, match="o2"):
        kerasfix._config._warned.clear()
        kerasfix.enable()
        losses = pack(case, [make_loss(k) for k in case["kinds"]])
        compile_loss = compile_utils.CompileLoss(
            losses, case["weights"], output_names=["o0", "o1", "o2"]
        )
        size, y_true, y_pred, sw = next(batches(case))
        total = float(compile_loss(y_true, y_pred))
    raw_a = raw_loss("mse", y_true[0], y_pred[0])
    raw_c = raw_loss("mae", y_true[2], y_pred[2])
    assert total == pytest.approx(0.5 * raw_a + 2.0 * raw_c, rel=1e-6)
    assert float(upstream[0]) == pytest.approx(0.5 * raw_a, rel=1e-6)
    metrics = {m.name: float(m.result()) for m in compile_loss.metrics}
    assert metrics == pytest.approx({"o0_loss": raw_a, "o2_loss": raw_c})

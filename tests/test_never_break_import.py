"""Never break `import keras`: whatever goes wrong while patching is undone,
reported by `status()`, and said once (or raised under `KERASFIX_STRICT`)."""

import json
import os
import subprocess
import sys
import warnings

import pytest

keras = pytest.importorskip("keras")

import kerasfix  # noqa: E402
from kerasfix import _adapters, _config, _loss_metrics, _patch, _wrapping  # noqa: E402

trainer_module = pytest.importorskip(_adapters.TRAINER)
compile_utils = pytest.importorskip(_adapters.COMPILE_UTILS)
loss_module = pytest.importorskip(_adapters.LOSS)
python_utils = pytest.importorskip(_adapters.PYTHON_UTILS)
callbacks = pytest.importorskip(_adapters.CALLBACKS)
OWNERS = (
    compile_utils.CompileLoss,
    _adapters.base_trainer(trainer_module),
    loss_module,
    callbacks.CallbackList,
    python_utils,
)
STEPS = (
    "wrap_method", "replace_method", "shadow_builtin", "wrap_property", "replace_property",
    "add_property",
)


def snapshot():
    return [dict(vars(owner)) for owner in OWNERS]


def assert_untouched(before):
    after = snapshot()
    for now, then in zip(after, before):
        assert set(now) == set(then)
        for name, value in then.items():
            assert now[name] is value, name
    assert not _wrapping.patched() and len(_loss_metrics._tracked) == 0


@pytest.fixture
def declined():
    """Runs `_patch.apply` as the import hook does; returns (warnings, status)."""

    def apply(strict=False):
        _config._warned.clear()
        _config.mode, _config.strict = "unweighted", strict
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _patch.apply(trainer_module)
        ours = [w for w in caught if issubclass(w.category, kerasfix.KerasfixWarning)]
        return ours, kerasfix.status()

    yield apply
    _config.strict = False
    _patch._declined = None


def wrap_steps(monkeypatch, fail_at=None):
    """Counts the `_wrapping` calls of one patch; the `fail_at`-th raises."""
    calls = []
    for name in STEPS:
        real = getattr(_wrapping, name)

        def step(*args, _real=real, _name=name):
            calls.append(_name)
            if len(calls) - 1 == fail_at:
                raise RuntimeError(f"step {fail_at} failed")
            return _real(*args)

        monkeypatch.setattr(_wrapping, name, step)
    return calls


def mechanism_steps(monkeypatch):
    """[(step, mechanism)] of one whole patch, in the order they run."""
    current = [None]
    real = _patch._installers

    def installers(adapter):
        for name, install in real(adapter):
            def run(install=install, name=name):
                current[0] = name
                return install()

            yield name, run

    monkeypatch.setattr(_patch, "_installers", installers)
    owners = []
    for name in STEPS:
        real_step = getattr(_wrapping, name)

        def step(*args, _real=real_step):
            owners.append(current[0])
            return _real(*args)

        monkeypatch.setattr(_wrapping, name, step)
    kerasfix.enable()
    kerasfix.disable()
    monkeypatch.undo()
    return owners


# Mechanisms that work through another one go off with it.
SERVED_BY = {
    "loss metrics": {"callbacks"},
    "add_metric": {"model.add_loss/add_metric"},
}


def test_each_wrap_step_that_raises_switches_off_its_mechanism_only(
    patch_supported, monkeypatch, declined
):
    owners = mechanism_steps(monkeypatch)
    assert {"loss metrics", "names and order", "add_metric"} <= set(owners)
    for fail_at, mechanism in enumerate(owners):
        before = snapshot()
        wrap_steps(monkeypatch, fail_at)
        said, status = declined()
        monkeypatch.undo()
        off = {mechanism} | SERVED_BY.get(mechanism, set())
        reason = f"RuntimeError while patching: step {fail_at} failed"
        if status["effective"] == "unsupported":
            assert off == set(_patch.MECHANISMS), fail_at
            assert reason in status["internals"]
        else:
            assert status["effective"] == "partial", fail_at
            # "not on <backend>" (add_loss on JAX) is no mechanism left off.
            assert {k for k, v in status["mechanisms"].items() if v.startswith("off:")} == off
            assert reason in status["mechanisms"][mechanism]
        # What is left in place is whole: every step of the mechanisms on.
        assert len(_wrapping._patches) == sum(1 for m in owners if m not in off)
        assert len(said) == 1 and reason in str(said[0].message)
        kerasfix.disable()
        assert_untouched(before)
        wrap_steps(monkeypatch, fail_at)
        with pytest.raises(kerasfix.KerasfixError, match=f"step {fail_at} failed"):
            declined(strict=True)
        monkeypatch.undo()
        assert_untouched(before)
    kerasfix.enable()  # nothing was left behind: the real patch still lands
    assert kerasfix.status()["effective"] == "patched"


@pytest.mark.parametrize(
    "owner,internal,mechanism",
    [
        ("layer", "_clear_losses", "add_metric"),
        ("trainer", "_flatten_metrics_in_order", "names and order"),
        ("trainer", "metrics_names", "names and order"),
        ("mean", "update_state", "add_loss"),
        ("jax trainer", "make_train_function", "add_metric"),
    ],
)
def test_a_missing_internal_switches_off_its_mechanism_only(
    patch_supported, monkeypatch, declined, owner, internal, mechanism
):
    import importlib

    from keras.src.layers import layer
    from keras.src.metrics import reduction_metrics

    if mechanism == "add_loss" and keras.config.backend() == "jax":
        pytest.skip("JAX rules the add_loss mechanism out: it needs nothing there")
    if owner == "jax trainer" and keras.config.backend() != "jax":
        pytest.skip("add_metric looks for the JAX trainer's step functions on JAX only")
    base = _adapters.base_trainer(trainer_module)
    cls = {
        "layer": layer.Layer,
        "mean": reduction_metrics.Mean,
        "trainer": base,
        "jax trainer": _adapters.backend_trainer(importlib.import_module(_adapters.MODEL), base),
    }[owner]
    monkeypatch.delattr(cls, internal)
    said, status = declined()
    assert status["effective"] == "partial"
    assert status["mechanisms"][mechanism].startswith("off:")
    assert internal in status["mechanisms"][mechanism]
    off = {mechanism} | SERVED_BY.get(mechanism, set())
    assert {k for k, v in status["mechanisms"].items() if v.startswith("off:")} == off
    assert len(said) == 1 and internal in str(said[0].message)
    kerasfix.disable()
    with pytest.raises(kerasfix.KerasfixError, match=internal):
        declined(strict=True)
    assert not _wrapping.patched()


def test_an_internal_that_is_no_function_switches_off_its_mechanism_only(
    patch_supported, monkeypatch, declined
):
    # Wrapped as a plain function, a staticmethod would take its first
    # argument for `self`: it is declined instead.
    cls = _adapters.base_trainer(trainer_module)
    monkeypatch.setattr(cls, "_flatten_metrics_in_order", staticmethod(lambda logs: logs))
    said, status = declined()
    assert status["effective"] == "partial"
    reason = status["mechanisms"]["names and order"]
    assert reason.startswith("off:") and "_flatten_metrics_in_order is a staticmethod" in reason
    assert len(said) == 1
    kerasfix.disable()
    with pytest.raises(kerasfix.KerasfixError, match="is a staticmethod"):
        declined(strict=True)
    assert not _wrapping.patched()


def test_a_wrapped_method_keeps_its_module_and_original(patch_supported):
    # TensorFlow's AutoGraph leaves functions of Keras's modules unconverted
    # (by `__module__`); so it must leave kerasfix's wrappers of them.
    original = vars(compile_utils.CompileLoss)["__call__"]
    kerasfix.enable()
    try:
        wrapped = vars(compile_utils.CompileLoss)["__call__"]
        assert wrapped is not original
        assert wrapped.__module__ == original.__module__ == compile_utils.__name__
        while wrapped is not original:
            wrapped = wrapped.__wrapped__
    finally:
        kerasfix.disable()
    assert vars(compile_utils.CompileLoss)["__call__"] is original


def test_detection_that_raises_leaves_keras_untouched(patch_supported, monkeypatch, declined):
    def broken(*args):
        raise AttributeError("no such internal")

    before = snapshot()
    monkeypatch.setattr(_adapters, "detect", broken)
    said, status = declined()
    assert_untouched(before)
    assert status["effective"] == "unsupported"
    assert "AttributeError while patching: no such internal" in status["internals"]
    assert len(said) == 1 and "no such internal" in str(said[0].message)
    with pytest.raises(kerasfix.KerasfixError, match="no such internal"):
        declined(strict=True)
    assert_untouched(before)


def test_missing_keras_module_is_declined_not_raised(patch_supported, monkeypatch, declined):
    before = snapshot()
    monkeypatch.setattr(_adapters, "LOSS", "keras.src.no_such_module")
    said, status = declined()
    assert_untouched(before)
    assert status["effective"] == "unsupported"
    assert "ModuleNotFoundError" in status["internals"]
    assert len(said) == 1


RAISING_DETECT = """
import json, warnings
warnings.simplefilter("always")
from kerasfix import _adapters

def broken(*args):
    raise RuntimeError("detection blew up")

_adapters.detect = broken
import keras
import numpy as np
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.compile("sgd", "mse")
model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
import kerasfix
print(json.dumps(kerasfix.status()))
"""


def run_with_kerasfix(script, **extra):
    """`script` in a new process with `KERASFIX=1` and `extra`'s variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    env.update(KERASFIX="1", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return subprocess.run(
        [sys.executable, "-c", script], env=env,
        capture_output=True, text=True, timeout=300,
    )


def test_import_keras_survives_a_raising_detection_in_a_new_process(patch_supported):
    done = run_with_kerasfix(RAISING_DETECT)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout.splitlines()[-1])
    assert status["effective"] == "unsupported"
    assert "detection blew up" in status["internals"]
    assert done.stderr.count("KerasfixWarning: kerasfix did not patch Keras") == 1
    strict = run_with_kerasfix(RAISING_DETECT, KERASFIX_STRICT="1")
    assert strict.returncode != 0
    assert "KerasfixError" in strict.stderr and "detection blew up" in strict.stderr


BROKEN_WRAPT = """
import json, sys, warnings
warnings.simplefilter("always")
sys.modules["wrapt"] = None  # `import wrapt` raises ImportError
import keras
import kerasfix
print(json.dumps(kerasfix.status()))
"""


def keras_backend_without_wrapt():
    # TensorFlow imports wrapt itself; JAX and torch Keras need none.
    import importlib.util

    for name in ("jax", "torch"):
        if importlib.util.find_spec(name) is not None:
            return name
    pytest.skip("needs JAX or torch: TensorFlow itself imports wrapt")


def test_import_keras_survives_a_broken_wrapt_in_a_new_process():
    backend = keras_backend_without_wrapt()
    done = run_with_kerasfix(BROKEN_WRAPT, KERAS_BACKEND=backend)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout.splitlines()[-1])
    assert status["effective"] == "unsupported"
    assert "wrapt" in status["internals"]
    assert done.stderr.count("KerasfixWarning: kerasfix could not load") == 1
    strict = run_with_kerasfix(BROKEN_WRAPT, KERAS_BACKEND=backend, KERASFIX_STRICT="1")
    assert strict.returncode != 0 and "KerasfixError" in strict.stderr

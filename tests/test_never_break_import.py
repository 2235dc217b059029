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
OWNERS = (compile_utils.CompileLoss, _adapters.base_trainer(trainer_module), loss_module)
STEPS = ("wrap_method", "wrap_property", "add_property")


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


def count_wrap_steps(monkeypatch):
    calls = wrap_steps(monkeypatch)
    kerasfix.enable()
    kerasfix.disable()
    monkeypatch.undo()
    return len(calls)


def test_each_wrap_step_that_raises_leaves_keras_untouched(
    patch_supported, monkeypatch, declined
):
    steps = count_wrap_steps(monkeypatch)
    assert steps >= 3  # __call__, build, metrics at least
    for fail_at in range(steps):
        before = snapshot()
        wrap_steps(monkeypatch, fail_at)
        said, status = declined()
        monkeypatch.undo()
        assert_untouched(before)
        assert status["effective"] == "unsupported", fail_at
        assert f"RuntimeError while patching: step {fail_at} failed" in status["internals"]
        assert len(said) == 1 and f"step {fail_at} failed" in str(said[0].message)
        wrap_steps(monkeypatch, fail_at)
        with pytest.raises(kerasfix.KerasfixError, match=f"step {fail_at} failed"):
            declined(strict=True)
        monkeypatch.undo()
        assert_untouched(before)
    kerasfix.enable()  # nothing was left behind: the real patch still lands
    assert kerasfix.status()["effective"] == "patched"


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


def test_import_keras_survives_a_raising_detection_in_a_new_process(patch_supported):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    env.update(KERASFIX="1", TF_CPP_MIN_LOG_LEVEL="3")
    run = lambda **extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", RAISING_DETECT], env=dict(env, **extra),
        capture_output=True, text=True, timeout=300,
    )
    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout.splitlines()[-1])
    assert status["effective"] == "unsupported"
    assert "detection blew up" in status["internals"]
    assert done.stderr.count("KerasfixWarning: kerasfix did not patch Keras") == 1
    strict = run(KERASFIX_STRICT="1")
    assert strict.returncode != 0
    assert "KerasfixError" in strict.stderr and "detection blew up" in strict.stderr

"""enable / disable / status, the import-time hook and the fail-safe."""

import json
import os
import subprocess
import sys
import types
import warnings

import pytest

import kerasfix
from kerasfix import _adapters, _config, _patch


def python(code, **env):
    """Runs `code` in a fresh interpreter with `env` added; returns it done."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True
    )


def test_import_kerasfix_imports_no_keras_and_no_wrapt():
    # wrapt waits for Keras: wrapt 2 imports asyncio, which costs ~30 ms.
    done = python(
        "import sys, kerasfix; print([m for m in sys.modules if m.split('.')[0] "
        "in ('keras', 'tensorflow', 'jax', 'torch', 'wrapt', 'asyncio')])"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bad_environment_value_raises_on_import():
    done = python("import kerasfix", KERASFIX="bogus")
    assert done.returncode != 0
    assert "KERASFIX='bogus'" in done.stderr


def test_unknown_mode_is_rejected_and_nothing_changes():
    with pytest.raises(ValueError, match="'raw'"):
        kerasfix.enable(mode="raw")
    assert kerasfix.status()["requested_mode"] is None


keras = pytest.importorskip("keras")
compile_utils = pytest.importorskip("keras.src.trainers.compile_utils")
trainer = pytest.importorskip("keras.src.trainers.trainer")
python_utils = pytest.importorskip(_adapters.PYTHON_UTILS)
callbacks = pytest.importorskip(_adapters.CALLBACKS)
OWNERS = (
    compile_utils.CompileLoss,
    _adapters.base_trainer(trainer),
    callbacks.CallbackList,
    python_utils,
)


def snapshot():
    return [dict(vars(owner)) for owner in OWNERS]


def test_patch_applies_whether_keras_is_imported_before_or_after(patch_supported):
    code = (
        "{first}\nimport json, kerasfix\nfrom keras.src.trainers import compile_utils\n"
        "print(hasattr(compile_utils.CompileLoss.__call__, '__wrapped__'))\n"
        "print(json.dumps(kerasfix.status()))"
    )
    statuses = []
    for first in ("import keras, kerasfix", "import kerasfix, keras", "import kerasfix"):
        done = python(code.format(first=first))
        assert done.returncode == 0, done.stderr
        *_, wrapped, status = done.stdout.splitlines()
        assert wrapped == "True", first
        statuses.append(json.loads(status))
    assert statuses[0] == statuses[1]


def test_disable_restores_original_attributes_exactly(patched):
    kerasfix.disable()
    originals = snapshot()
    kerasfix.enable()
    assert snapshot() != originals
    kerasfix.disable()
    after = snapshot()
    assert [set(a) for a in after] == [set(o) for o in originals]
    for now, then in zip(after, originals):
        for name, value in then.items():
            assert now[name] is value, name
    # Added, not replaced: gone, or every later enable() would meet it.
    assert "sorted" not in vars(python_utils)


def test_enable_and_disable_are_idempotent(patched):
    kerasfix.enable()
    once = snapshot()
    kerasfix.enable()
    assert snapshot() == once
    kerasfix.disable()
    off = snapshot()
    kerasfix.disable()
    assert snapshot() == off


def test_status_reports_what_is_in_force(patched):
    info = kerasfix.status()
    assert info["keras"] == keras.__version__
    assert info["backend"] == keras.config.backend()
    assert info["requested_mode"] == "unweighted"
    assert info["effective"] == "patched"
    assert info["internals"]
    kerasfix.disable()
    info = kerasfix.status()
    assert info["effective"] == "upstream" and info["requested_mode"] is None


def test_unknown_internals_patch_nothing_and_warn_once():
    empty = types.ModuleType("not_keras")
    loss = sys.modules[_adapters.LOSS]
    adapter, missing = _adapters.detect(empty, trainer, loss, "tensorflow")
    assert adapter is None and "CompileLoss" in missing
    adapter, missing = _adapters.detect(compile_utils, empty, loss, "tensorflow")
    assert adapter is None and "trainer class" in missing


def test_declined_patch_warns_once_and_strict_makes_it_an_error(monkeypatch):
    originals = snapshot()
    monkeypatch.setattr(_adapters, "TRAINER", "kerasfix")  # no Trainer there
    _config._warned.clear()
    _config.mode = "unweighted"
    with pytest.warns(kerasfix.KerasfixWarning, match="did not patch Keras"):
        _patch.apply(sys.modules["kerasfix"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _patch.apply(sys.modules["kerasfix"])  # said once already
    assert snapshot() == originals
    assert kerasfix.status()["effective"] == "unsupported"
    _config.strict = True
    try:
        with pytest.raises(kerasfix.KerasfixError, match="KERASFIX_STRICT"):
            _patch.apply(sys.modules["kerasfix"])
    finally:
        _config.strict = False
        _patch._declined = None
    assert snapshot() == originals


@pytest.mark.skipif(
    keras.config.backend() != "jax"
    or "stateless_compute_loss" in vars(_adapters.base_trainer(trainer)),
    reason="only where the JAX trainer cannot carry kerasfix's metrics",
)
def test_jax_on_keras_3_0_and_3_1_is_declined_with_a_clear_warning():
    done = python(
        "import warnings, json\nwarnings.simplefilter('always')\n"
        "import kerasfix, keras\nprint(json.dumps(kerasfix.status()))",
        KERAS_BACKEND="jax",
    )
    assert "kerasfix did not patch Keras" in done.stderr
    assert "stateless_compute_loss" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["effective"] == "unsupported"
    strict = python("import kerasfix, keras", KERAS_BACKEND="jax", KERASFIX_STRICT="1")
    assert strict.returncode != 0 and "KerasfixError" in strict.stderr


def test_model_compiled_before_enable_keeps_keras_metrics_and_says_so():
    from support import data, two_outputs

    x, ya, yb, _ = data(16)
    model = two_outputs()
    model.compile("sgd", loss=["mse", "mse"])
    upstream = model.evaluate(x, [ya, yb], return_dict=True, verbose=0)
    _config._warned.clear()
    kerasfix.enable()
    if kerasfix.status()["effective"] != "patched":
        pytest.skip("kerasfix does not patch here")
    with pytest.warns(kerasfix.KerasfixWarning, match="compiled again"):
        again = model.evaluate(x, [ya, yb], return_dict=True, verbose=0)
    assert again == upstream

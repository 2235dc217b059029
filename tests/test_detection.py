"""Detection by role: a refactor that renames Keras's classes or ships Keras
under another distribution name (keras-nightly) changes nothing."""

import json
import sys
import types

import pytest

keras = pytest.importorskip("keras")
trainer_module = pytest.importorskip("keras.src.trainers.trainer")

import kerasfix  # noqa: E402
from kerasfix import _adapters  # noqa: E402
from support import cli  # noqa: E402


def detect(trainer):
    return _adapters.detect(
        sys.modules[_adapters.COMPILE_UTILS],
        trainer,
        sys.modules[_adapters.LOSS],
        keras.config.backend(),
    )


def test_trainer_is_the_trainer_module_class_keras_model_inherits():
    base = _adapters.base_trainer(trainer_module)
    assert base is not None and base in keras.Model.__mro__


def test_a_renamed_trainer_class_is_found_all_the_same():
    base = _adapters.base_trainer(trainer_module)
    renamed = types.ModuleType(trainer_module.__name__)
    attributes = dict(vars(base), __module__=renamed.__name__)
    renamed.SomeFutureName = type("SomeFutureName", base.__bases__, attributes)
    adapter, why = detect(renamed)
    # Where this release declines, the reason names the class it found.
    why = why and why.replace("SomeFutureName", base.__name__)
    assert (adapter, why) == detect(trainer_module)


def test_two_trainer_candidates_decline_rather_than_guess():
    base = _adapters.base_trainer(trainer_module)
    twice = types.ModuleType(trainer_module.__name__)
    for name in ("One", "Two"):
        setattr(twice, name, type(name, (), dict(vars(base), __module__=twice.__name__)))
    adapter, why = detect(twice)
    assert adapter is None and "no single trainer class" in why


def test_version_is_keras_own_whatever_the_distribution_is_called():
    assert _adapters.keras_version() == keras.version()
    assert kerasfix.status()["keras"] == keras.version()


def test_status_check_and_demo_name_the_installed_keras(patch_supported):
    version = keras.version()
    info = json.loads(cli("status", "--json", KERASFIX="1").stdout)
    assert (info["keras"], info["effective"]) == (version, "patched")
    check = cli("check", KERASFIX="1", KERASFIX_STRICT="1")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"Keras {version} ({keras.config.backend()})" in check.stdout
    assert "measured: unweighted; expected: unweighted" in check.stdout
    demo = cli("demo")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith(f"Keras {version}, {keras.config.backend()} backend")
    assert "(patched)" in demo.stdout

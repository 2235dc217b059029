"""Detection by role: a refactor that renames Keras's classes or ships Keras
under another distribution name (keras-nightly) changes nothing."""

import json
import pathlib
import re
import sys
import types
from importlib import metadata

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


def keras_version_from_sources():
    """The imported Keras's version, asked of no Keras code: the string in
    its `src/version.py` read as text, and the version in the metadata of the
    distribution (`keras`, `keras-nightly`, ...) that installed that file,
    where one did (a source tree has none)."""
    package = pathlib.Path(keras.__file__).resolve().parent
    version_py = package / "src" / "version.py"
    if not version_py.is_file():  # an older layout
        version_py = package / "version.py"
    found = re.findall(
        r"""^__version__\s*=\s*["']([^"']+)["']""",
        version_py.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert len(found) == 1, f"no single __version__ in {version_py}"
    versions = {"version.py": found[0]}
    for name in metadata.packages_distributions().get("keras", []):
        distribution = metadata.distribution(name)
        files = {
            pathlib.Path(distribution.locate_file(f)).resolve()
            for f in distribution.files or ()
        }
        if version_py.resolve() in files:
            versions[f"{name} metadata"] = distribution.version
    return versions


def test_version_is_keras_own_whatever_the_distribution_is_called():
    versions = keras_version_from_sources()
    expected = versions["version.py"]
    assert set(versions.values()) == {expected}, versions
    assert _adapters.keras_version() == expected
    assert kerasfix.status()["keras"] == expected


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

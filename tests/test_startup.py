"""Zero-code activation: the `.pth` start-up hook, end to end."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import keras
import numpy as np
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(20, 4)).astype("float32")
y = [x[:, :1] * 3, (x[:, 1:2] > 0).astype("float32")]
inp = keras.Input((4,))
model = keras.Model(inp, [keras.layers.Dense(1, name="a")(inp),
                          keras.layers.Dense(1, activation="sigmoid", name="b")(inp)])
model.compile("sgd", loss=["mse", "binary_crossentropy"], loss_weights=[0.5, 3.0])
logs = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
a, b = model.predict(x, batch_size=20, verbose=0)
raw = float(keras.ops.convert_to_numpy(keras.losses.MeanSquaredError()(y[0], a)))
print(json.dumps({"a_loss": logs.get("a_loss"), "raw_a": raw,
                  "kerasfix_imported": "kerasfix" in sys.modules}))
"""


def source_copy(where):
    """A copy of the project, so builds leave the checkout untouched."""
    return shutil.copytree(
        ROOT,
        where / "src",
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".hypothesis", "build", "*.egg-info", ".ci"
        ),
    )


def run(code, env_extra, python=sys.executable):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    env.update(env_extra)
    return subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def pth_installed():
    purelib = Path(sysconfig.get_paths()["purelib"])
    return (purelib / "kerasfix.pth").exists()


needs_pth = pytest.mark.skipif(
    not pth_installed(), reason="kerasfix is not pip-installed here"
)


@needs_pth
def test_script_that_never_imports_kerasfix_reports_raw_losses(patch_supported):
    pytest.importorskip("keras")
    done = run(SCRIPT, {"KERASFIX": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["kerasfix_imported"]
    assert result["a_loss"] == pytest.approx(result["raw_a"], rel=1e-5)


@needs_pth
def test_multiprocessing_workers_get_kerasfix_too(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(
        "import multiprocessing as mp, sys\n"
        "def probe(_):\n"
        "    return 'kerasfix' in sys.modules\n"
        "if __name__ == '__main__':\n"
        "    with mp.get_context('spawn').Pool(2) as pool:\n"
        "        print(all(pool.map(probe, range(4))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    done = subprocess.run(
        [sys.executable, str(script)], env=dict(env, KERASFIX="1"),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


@needs_pth
def test_unset_variable_leaves_keras_alone():
    pytest.importorskip("keras")
    done = run(SCRIPT, {})
    assert done.returncode == 0, done.stderr
    assert not json.loads(done.stdout.splitlines()[-1])["kerasfix_imported"]


@needs_pth
def test_bad_value_prints_one_line_and_the_script_still_runs():
    done = run("print('ran')", {"KERASFIX": "bogus"})
    assert done.returncode == 0
    assert done.stdout.strip() == "ran"
    lines = [l for l in done.stderr.splitlines() if l.startswith("kerasfix:")]
    assert len(lines) == 1
    assert "KERASFIX='bogus'" in lines[0] and "unweighted" in lines[0]


def offline(python, *args, cwd=None):
    """pip without the network: only what is built or installed here."""
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args,
         "--no-index", "--no-deps", "-q"],
        check=True, capture_output=True, cwd=cwd,
    )


def new_venv(where):
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    return where / "bin" / "python"


def build(kind, source, into):
    """The file setuptools' `build_<kind>` makes from `source`, offline, with
    this environment's setuptools."""
    made = subprocess.run(
        [sys.executable, "-c",
         f"import sys, setuptools.build_meta as b; print(b.build_{kind}(sys.argv[1]))",
         str(into)],
        cwd=source, capture_output=True, text=True, check=True,
    )
    return into / made.stdout.split()[-1]


@pytest.fixture
def fresh_venv(tmp_path):
    """A new virtualenv with kerasfix installed from a wheel built here,
    without the network (this environment's setuptools builds it)."""
    offline(
        sys.executable, "wheel", "--no-build-isolation", "-w",
        str(tmp_path / "dist"), str(source_copy(tmp_path)),
    )
    python = new_venv(tmp_path / "env")
    offline(python, "install", str(next((tmp_path / "dist").glob("kerasfix-*.whl"))))
    return python


def site_packages(python):
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    )
    return Path(out.stdout.strip())


def test_wheel_install_puts_the_hook_in_place_and_uninstall_removes_it(fresh_venv):
    pth = site_packages(fresh_venv) / "kerasfix.pth"
    assert pth.exists()
    on = run("import sys; print('kerasfix' in sys.modules)", {"KERASFIX": "on"}, fresh_venv)
    off = run("import sys; print('kerasfix' in sys.modules)", {}, fresh_venv)
    assert (on.stdout.strip(), off.stdout.strip()) == ("True", "False")
    subprocess.run(
        [str(fresh_venv), "-m", "pip", "uninstall", "-y", "-q", "kerasfix"],
        check=True, capture_output=True,
    )
    assert not pth.exists()
    after = run("print('ok')", {"KERASFIX": "1"}, fresh_venv)
    assert after.stdout.strip() == "ok" and after.stderr == ""


def test_editable_install_gets_the_hook_too(tmp_path):
    source = source_copy(tmp_path)
    editable = build("editable", source, tmp_path / "dist")
    python = new_venv(tmp_path / "env")
    offline(python, "install", str(editable))
    assert (site_packages(python) / "kerasfix.pth").exists()
    on = run("import sys; print('kerasfix' in sys.modules)", {"KERASFIX": "1"}, python)
    assert on.stdout.strip() == "True", on.stderr


def test_sdist_carries_the_tests_and_builds_a_wheel_with_the_hook(tmp_path):
    """pip builds from the sdist when no wheel fits: that wheel needs the
    `.pth`, and the tests shipped in the sdist need their helpers."""
    source = source_copy(tmp_path)
    with tarfile.open(build("sdist", source, tmp_path / "sdist")) as sdist:
        sdist.extractall(tmp_path / "unpacked", filter="data")
    unpacked = next((tmp_path / "unpacked").iterdir())
    wanted = {
        p.relative_to(source) for p in (source / "tests").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    shipped = {p.relative_to(unpacked) for p in (unpacked / "tests").rglob("*") if p.is_file()}
    assert shipped == wanted
    with zipfile.ZipFile(build("wheel", unpacked, tmp_path / "wheel")) as wheel:
        assert "kerasfix.pth" in wheel.namelist()


def test_keras_2_is_left_native(tmp_path):
    """With Keras 2 as `keras` (tf-keras, Keras 2's code, installed here),
    kerasfix changes nothing and says so."""
    pytest.importorskip("tf_keras")
    shim = tmp_path / "keras"
    shim.mkdir()
    (shim / "__init__.py").write_text("from tf_keras import *  # noqa\nfrom tf_keras import __version__\n")
    done = run(
        "import json, keras, kerasfix; print(json.dumps([keras.__version__, kerasfix.status()]))",
        {"KERASFIX": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
         "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    version, status = json.loads(done.stdout.splitlines()[-1])
    assert version.startswith("2.") and status["keras"] == version
    assert status["effective"] == "native"

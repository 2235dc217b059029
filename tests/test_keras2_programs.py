"""Keras 2 programs, run unchanged as Keras 2 and as Keras 3 with `KERASFIX=1`.

Each script in tests/keras2_programs/ (but `_program.py`) is Keras 2
training code as users wrote it (`from tensorflow import keras`). The
harness runs it twice, in two new processes at once: as Keras 2
(`TF_USE_LEGACY_KERAS=1`, tf-keras) and as Keras 3 with `KERASFIX=1` alone
(the script never imports kerasfix; the `.pth` start-up hook does, from the
directory of the kerasfix this test imported, put first on PYTHONPATH).
Both give the model the same initial weights (`_program.same_start`) and
print one line of JSON (`_program.report`); every logged key, its order and value
(History of `fit` with validation, `evaluate()`, `metrics_names`) must agree
at rtol 1e-5.

TensorFlow only, by nature: tf-keras runs on TensorFlow alone.

Adding a program is adding one file. A program Keras 3 cannot run as Keras 2
did for a reason outside kerasfix carries a line
`# keras3 differs: <why>`, and is expected to differ (strictly) for that reason.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from support import loss_is_per_batch

pytestmark = pytest.mark.skipif(
    loss_is_per_batch(),
    reason="Keras 3.0-3.1 (loss averaged per batch, add_loss summed in "
    "another graph): kerasfix's Keras 2 add_loss logging is not supported "
    "there; these tests failed on 3.0.5",
)

PROGRAMS = pathlib.Path(__file__).parent / "keras2_programs"
SCRIPTS = sorted(p for p in PROGRAMS.glob("*.py") if not p.name.startswith("_"))
MARK = "KERAS2_PROGRAM "
DIFFERS = re.compile(r"^# keras3 differs: (.+)$", re.MULTILINE)


def _start(script, run):
    import kerasfix

    # The kerasfix this test imported (the worktree's, or whichever
    # PYTHONPATH names first) is the one the start-up hook must import.
    root = str(pathlib.Path(kerasfix.__file__).parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERASFIX", "TF_USE_LEGACY"))}
    env.update(
        KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")])),
    )
    env.update({"TF_USE_LEGACY_KERAS": "1"} if run == "keras2" else {"KERASFIX": "1"})
    return subprocess.Popen(
        [sys.executable, str(script)], env=env, cwd=PROGRAMS,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _report(script, run, process):
    try:
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, f"{script.name} as {run}:\n{err[-4000:]}"
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    assert len(lines) == 1, f"{script.name} as {run} printed {len(lines)} reports"
    return json.loads(lines[0][len(MARK):])


def _differences(keras2, keras3):
    """What the Keras 3 run logged otherwise than Keras 2, as sentences."""
    found = []
    for part in ("history", "evaluate"):
        if _shape(keras2[part]) != _shape(keras3[part]):
            found.append(f"{part}: Keras 2 {keras2[part]}, Keras 3 {keras3[part]}")
        elif not np.allclose(_numbers(keras2[part]), _numbers(keras3[part]), rtol=1e-5, atol=0):
            found.append(f"{part}: Keras 2 {keras2[part]}, Keras 3 {keras3[part]}")
    if keras2["metrics_names"] != keras3["metrics_names"]:
        found.append(
            f"metrics_names: Keras 2 {keras2['metrics_names']}, Keras 3 {keras3['metrics_names']}"
        )
    return found


def _shape(value):
    """The keys (in order) and lengths of a report, without its numbers."""
    if isinstance(value, list):
        return [v[0] if isinstance(v, list) and v and isinstance(v[0], str) else _shape(v) for v in value]
    return "number"


def _numbers(value):
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [] if isinstance(value, str) else [value]


@pytest.mark.oracle
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_keras2_program_logs_what_keras2_logged(script):
    import kerasfix

    # The programs run on TensorFlow whatever the suite's backend: once,
    # in the TensorFlow runs of the matrix, is their budget.
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("TensorFlow only (tf-keras): run in the suite's TensorFlow runs")
    for module in ("tensorflow", "tf_keras"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the Keras 2 run needs tf-keras on TensorFlow")
    runs = {run: _start(script, run) for run in ("keras2", "keras3")}
    keras2, keras3 = (_report(script, run, process) for run, process in runs.items())
    ours = kerasfix.__file__
    assert keras2["keras"].startswith("2."), keras2["keras"]
    assert keras3["keras"].startswith("3."), keras3["keras"]
    assert keras3["kerasfix"] == ours, (
        f"the start-up hook imported {keras3['kerasfix']}, not {ours}"
    )
    found = _differences(keras2, keras3)
    why = DIFFERS.search(script.read_text())
    if why is not None:
        assert found, f"{script.name} says Keras 3 differs ({why[1]}) but logs as Keras 2 did"
        pytest.xfail(f"{why[1]}: {'; '.join(found)}")
    assert not found, "\n".join(found)

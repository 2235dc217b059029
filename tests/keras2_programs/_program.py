"""What every Keras 2 program here shares with the harness
(tests/test_keras2_programs.py): the initial weights it hands from the
Keras 2 run to the Keras 3 run, and the one line of JSON it reads back.

Nothing else: a program is Keras 2 code as users wrote it.
"""

import json
import os
import sys

import numpy as np

MARK = "KERAS2_PROGRAM "


def same_start(model):
    """The Keras 2 run saves `model`'s initial weights, the Keras 3 run loads them."""
    path = os.environ["KERAS2_PROGRAM_WEIGHTS"]
    if os.environ["KERAS2_PROGRAM_RUN"] == "keras2":
        np.savez(path, *model.get_weights())
        return
    with np.load(path) as saved:
        model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return [[k, _plain(v)] for k, v in value.items()]
    return float(value)


def report(keras, model, history, evaluated):
    """Prints what the program logged, keys in the order they were logged."""
    kerasfix = sys.modules.get("kerasfix")
    print(MARK + json.dumps({
        # `tensorflow.keras` of tf-keras has no `__version__`; tf_keras has.
        "keras": getattr(keras, "__version__", None)
        or sys.modules["tf_keras"].__version__,
        "kerasfix": getattr(kerasfix, "__file__", None),
        "history": _plain(history.history),
        "evaluate": _plain(evaluated),
        "metrics_names": list(model.metrics_names),
    }))

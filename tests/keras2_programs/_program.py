"""What every Keras 2 program here shares with the harness
(tests/test_keras2_programs.py): initial weights both runs draw alike, and
the one line of JSON the harness reads back.

Nothing else: a program is Keras 2 code as users wrote it.
"""

import json
import sys

import numpy as np

MARK = "KERAS2_PROGRAM "


def same_start(model):
    """Gives `model` the same initial weights in both runs, drawn by numpy
    (Keras 2 and 3 list a model's weights in the same order), so the two
    runs need not wait for each other."""
    rng = np.random.default_rng(0)
    model.set_weights(
        [rng.uniform(-0.5, 0.5, size=w.shape).astype(w.dtype) for w in model.get_weights()]
    )


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
        # `tensorflow.keras` has no `__version__` under tf-keras, nor under
        # Keras 3.0-3.2; the package it stands for has.
        "keras": getattr(keras, "__version__", None)
        or (sys.modules.get("tf_keras") or sys.modules["keras"]).__version__,
        "kerasfix": getattr(kerasfix, "__file__", None),
        "history": _plain(history.history),
        "evaluate": _plain(evaluated),
        "metrics_names": list(model.metrics_names),
    }))

"""What kerasfix costs a training step, measured; prints figures and goals.

    KERAS_BACKEND=jax python benchmarks/overhead.py [--rounds 15 --steps 20]

In one process, three identical two-output models take turns training,
`--steps` steps per turn for `--rounds` turns. Their heads: a 2,000-class
softmax with sparse categorical cross-entropy, and a 1,024-unit embedding
whose loss compares every prediction with every target in the batch, so
the loss costs more than the model:

- unpatched: compiled and built before kerasfix is enabled, so its steps
  are Keras's own (on torch they still pass kerasfix's wrapper, which hands
  them straight to Keras);
- kerasfix: compiled with kerasfix enabled;
- workaround: unpatched, with each output's loss recomputed as a compile
  metric, which is what users write today to see raw per-output losses.

Step times are measured as `_turns.py` says. A Python loss function
counts how often each model's step is traced (for
compiled steps Python runs only while tracing). `import kerasfix` is timed
in fresh interpreters.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import warnings

import _turns

CLASSES, FEATURES, EMBED, BATCH = 2000, 64, 1024, 128


def import_cost(runs=15):
    code = (
        "import sys, time; t = time.perf_counter(); import kerasfix; "
        "print(time.perf_counter() - t); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'keras', 'tensorflow', 'jax', 'torch'}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERASFIX"}
    times, heavy = [], None
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        ).stdout.split("\n")
        times.append(float(out[0]) * 1e3)
        heavy = out[1]
    return statistics.median(times), heavy


def main(argv=None):
    parser = argparse.ArgumentParser(description="kerasfix step overhead")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    import numpy as np

    import kerasfix

    kerasfix.disable()
    import keras

    backend = keras.config.backend()
    rng = np.random.default_rng(0)
    n = BATCH * args.steps
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = {
        "cls": rng.integers(0, CLASSES, size=(n, 1)),
        "emb": rng.normal(size=(n, EMBED)).astype("float32"),
    }
    traces = {}

    def pairwise(y_true, y_pred):
        """Mean squared distance of each prediction to every target."""
        ops = keras.ops
        d = ops.expand_dims(y_pred, 1) - ops.expand_dims(y_true, 0)
        return ops.mean(ops.square(d), axis=(1, 2))

    def counted(name):
        def emb_loss(y_true, y_pred):
            traces[name] = traces.get(name, 0) + 1
            return pairwise(y_true, y_pred)

        return emb_loss

    def model(name):
        keras.utils.set_random_seed(0)
        inp = keras.Input((FEATURES,))
        h = keras.layers.Dense(64, activation="relu")(inp)
        out = {
            "cls": keras.layers.Dense(CLASSES, activation="softmax", name="cls")(h),
            "emb": keras.layers.Dense(EMBED, name="emb")(h),
        }
        m = keras.Model(inp, out)
        metrics = None
        if name == "workaround":
            metrics = {
                "cls": [keras.metrics.SparseCategoricalCrossentropy(name="raw")],
                "emb": [keras.metrics.MeanMetricWrapper(pairwise, name="raw")],
            }
        m.compile(
            keras.optimizers.SGD(0.01),
            loss={"cls": "sparse_categorical_crossentropy", "emb": counted(name)},
            loss_weights={"cls": 1.0, "emb": 0.5},
            metrics=metrics,
        )
        return m

    def fit(m, callbacks=()):
        m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    models = {"unpatched": model("unpatched"), "workaround": model("workaround")}
    for m in models.values():
        fit(m)  # traced and built before kerasfix is on
    kerasfix.enable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerasfix.KerasfixWarning)
        models["kerasfix"] = model("kerasfix")
        fit(models["kerasfix"])
        steps, medians = _turns.take_turns(models, args.rounds, fit)
    median = {name: statistics.median(t) * 1e3 for name, t in steps.items()}
    ratio, quartiles = _turns.ratio(steps, medians, "kerasfix", "unpatched")
    limit = 1.05 if backend == "torch" else 1.02
    import_ms, heavy = import_cost()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "keras": keras.__version__,
        "backend": backend,
        "median_step_ms": {k: round(v, 3) for k, v in median.items()},
        "kerasfix/unpatched": round(ratio, 4),
        "kerasfix/unpatched per round, quartiles": [round(q, 4) for q in quartiles],
        "workaround/unpatched": round(median["workaround"] / median["unpatched"], 4),
        "traces": traces,
        "import_kerasfix_ms": round(import_ms, 2),
        "heavy_modules_imported": heavy,
    }
    print(json.dumps(report, indent=1))
    goals = [
        (f"kerasfix/unpatched <= {limit}", ratio <= limit),
        ("kerasfix faster than the workaround", median["kerasfix"] < median["workaround"]),
        (
            "same number of traces with and without kerasfix",
            traces.get("kerasfix") == traces.get("unpatched"),
        ),
        ("import kerasfix under 20 ms", import_ms < 20),
        ("import kerasfix imports no Keras/TF/JAX/torch", heavy == "[]"),
    ]
    for goal, met in goals:
        print(f"{'met ' if met else 'MISSED'}  {goal}")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`python -m kerasfix` / `kerasfix`: status, check and demo."""

import argparse
import json

import kerasfix

# A small two-output model whose per-output metrics tell the semantics apart:
# weights that differ from 1, and 20 samples in batches of 16 so the last
# batch is short (Keras 3.7+ on TensorFlow weights it wrongly).
WEIGHTS = {"a": 0.5, "b": 3.0}
SAMPLES, BATCH = 20, 16


def _status(args):
    info = kerasfix.status()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            if isinstance(value, dict):
                for name, state in value.items():
                    print(f"{key:<15} {name}: {state}")
            else:
                print(f"{key:<15} {value}")
    return 0


def _model_and_data():
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    y = {
        "a": (3 * rng.normal(size=(SAMPLES, 1))).astype("float32"),
        "b": (rng.random((SAMPLES, 1)) > 0.5).astype("float32"),
    }
    inp = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(
        inp,
        [
            keras.layers.Dense(1, name="a")(h),
            keras.layers.Dense(1, activation="sigmoid", name="b")(h),
        ],
    )
    return model, x, y


def _measure(weights=None):
    """Trains one step, evaluates, and returns what was reported and raw.

    `weights` starts the model from given weights, so two measurements see
    the same model.
    """
    import keras

    model, x, y = _model_and_data()
    if weights is not None:
        model.set_weights(weights)
    model.compile(
        keras.optimizers.SGD(learning_rate=0.0),
        loss={"a": "mse", "b": "binary_crossentropy"},
        loss_weights=WEIGHTS,
    )
    model.train_on_batch(x[:BATCH], {k: v[:BATCH] for k, v in y.items()})
    logs = model.evaluate(x, y, batch_size=BATCH, return_dict=True, verbose=0)
    a, b = model.predict(x, batch_size=SAMPLES, verbose=0)
    to_float = keras.ops.convert_to_numpy
    raw = {
        "a": float(to_float(keras.losses.MeanSquaredError()(y["a"], a))),
        "b": float(to_float(keras.losses.BinaryCrossentropy()(y["b"], b))),
    }
    reported = {k: logs.get(f"{k}_loss") for k in raw}
    return model.get_weights(), reported, raw


def _close(a, b):
    return a is not None and abs(a - b) <= 1e-4 * max(1.0, abs(b))


def _semantics(reported, raw):
    if any(v is None for v in reported.values()):
        return "missing"
    if all(_close(reported[k], raw[k]) for k in raw):
        return "unweighted"
    if all(_close(reported[k], raw[k] * WEIGHTS[k]) for k in raw):
        return "weighted"
    return "neither"


MEANING = {
    "unweighted": "raw losses (Keras 2)",
    "weighted": "raw x weight (Keras 3.5/3.6)",
    "missing": "no per-output losses",
    "neither": "neither raw nor raw x weight",
}


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def _fmt(value):
    return "missing" if value is None else f"{value:.4f}"


def _check(args):
    info = kerasfix.status()
    expected = args.expect or info["requested_mode"] or "unweighted"
    if info["effective"] == "no keras":
        print("kerasfix check: Keras is not installed.")
        return 2
    _, reported, raw = _measure()
    measured = _semantics(reported, raw)
    rows = [("output", "weight", "raw", "raw x weight", "reported")]
    for k in raw:
        rows.append(
            (k, WEIGHTS[k], _fmt(raw[k]), _fmt(raw[k] * WEIGHTS[k]), _fmt(reported[k]))
        )
    print(
        f"Keras {info['keras']} ({info['backend']}), kerasfix "
        f"{info['kerasfix']}: {info['effective']}"
    )
    _table(rows)
    print(f"measured: {measured}; expected: {expected}")
    if info["effective"] == "unsupported":
        print(f"kerasfix declined to patch this Keras: {info['internals']}")
        return 2
    for name, state in (info["mechanisms"] or {}).items():
        if state != "on":
            print(f"kerasfix mechanism {name}: {state}")
    return 0 if measured == expected else 1


def _demo(args):
    info = kerasfix.status()
    if info["effective"] == "no keras":
        print("kerasfix demo: install Keras 3 first (pip install keras).")
        return 2
    mode = info["requested_mode"] or "unweighted"
    kerasfix.disable()
    weights, upstream, raw = _measure()
    kerasfix.enable(mode)
    _, fixed, _ = _measure(weights)
    print(
        f"Keras {info['keras']}, {info['backend']} backend; loss weights "
        f"a={WEIGHTS['a']}, b={WEIGHTS['b']}; evaluate() on {SAMPLES} "
        f"samples in batches of {BATCH}.\n"
    )
    rows = [
        ("metric", "raw loss", "kerasfix off", f"kerasfix on ({mode})"),
    ]
    for k in raw:
        rows.append((f"{k}_loss", _fmt(raw[k]), _fmt(upstream[k]), _fmt(fixed[k])))
    _table(rows)
    print(
        f"\nkerasfix off: {MEANING[_semantics(upstream, raw)]}; "
        f"kerasfix on: {MEANING[_semantics(fixed, raw)]} "
        f"({kerasfix.status()['effective']})."
    )
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="kerasfix",
        description="Keras 2's per-output loss metrics on Keras 3.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser("status", help="what kerasfix does here")
    status.add_argument("--json", action="store_true", help="print JSON")
    check = commands.add_parser(
        "check",
        help="measure the per-output semantics; exit 0 same, 1 differ, "
        "2 kerasfix declined",
    )
    check.add_argument(
        "--expect",
        choices=kerasfix.MODES,
        help="semantics to require (default: the requested mode)",
    )
    commands.add_parser("demo", help="per-output metrics with kerasfix off and on")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["status", *(argv or [])])
    handler = {"status": _status, "check": _check, "demo": _demo}[args.command]
    return handler(args)


"""What kerasfix costs each call a user makes, measured; prints figures and goals.

    KERAS_BACKEND=jax python benchmarks/calls.py [--rounds 5] [--json]

Each arm runs in its own process, this script again with `--child`: one
with `KERASFIX=1` (kerasfix on, as its `.pth` line turns it on), one with
`KERASFIX` removed from the environment (kerasfix never imported, so Keras
runs as it is; two models in one process would both pass kerasfix's
wrappers). The two processes alternate, `--rounds` times each, in an order
that flips each round, since this host's speed drifts within seconds.

Each process builds two small models (Dense 16, batch 32, so the per-call
overhead shows): one output (`loss="mse"`, `metrics=["mae"]`) and two
functional outputs `a`, `b` (`loss=["mse", "mse"]`,
`metrics=[["mae"], ["mae"]]`). After warming up (the first calls trace) it
times, in blocks that take turns, the median per call of:

- `train_on_batch(x, y)` (a list result) and with `return_dict=True`;
- `test_on_batch(x, y)`;
- `model.metrics_names`, and for reference `[m.name for m in model.metrics]`,
  which is what Keras's own `metrics_names` does (in the kerasfix process
  `model.metrics` is kerasfix's, as users see it);
- a step of `fit` for a model with N heads (N = 2, 16, 64; each Dense(1) on
  a shared Dense(16), loss "mse" each): 3 epochs of 40 steps, a step's time
  from one step's end to the next, the first epoch left out.

The table gives each arm's median over the rounds, the ratio of the two,
and the lowest and highest ratio of a single round. Goals: kerasfix / none
<= 1.02 per call on TensorFlow and JAX, <= 1.05 on torch; kerasfix's
`metrics_names` <= 2x the reference read in the same process. Nothing is
asserted: the figures and goals are printed.

On a busy host, torch's two intra-op threads make these tiny steps take
5-60 ms at random; `OMP_NUM_THREADS=1`, which both arms inherit, steadies them.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

FEATURES, HIDDEN, BATCH = 8, 16, 32
HEADS = (2, 16, 64)
EPOCHS, STEPS = 3, 40
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def per_call(calls, repeat, block=0.02):
    """Median seconds per call of each `calls[name]`, timed in blocks of
    about `block` seconds that take turns, so all meet the same drift."""
    number = {}
    for name, fn in calls.items():
        t = time.perf_counter()
        fn()
        number[name] = max(1, round(block / (time.perf_counter() - t)))
    times = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            t = time.perf_counter()
            for _ in range(number[name]):
                fn()
            times[name].append((time.perf_counter() - t) / number[name])
    return {name: statistics.median(t) for name, t in times.items()}


def child():
    if os.environ.get("KERASFIX"):
        import kerasfix  # noqa: F401  (as the .pth line does, but failing loudly)
    import keras
    import numpy as np

    rng = np.random.default_rng(0)

    def data(n, outputs):
        x = rng.normal(size=(n, FEATURES)).astype("float32")
        ys = [rng.normal(size=(n, 1)).astype("float32") for _ in range(outputs)]
        return x, ys[0] if outputs == 1 else ys

    def model(names, metrics):
        """Dense(1) heads `names` on a shared Dense(16); list losses past one."""
        keras.utils.set_random_seed(0)
        inp = keras.Input((FEATURES,))
        h = keras.layers.Dense(HIDDEN, activation="relu")(inp)
        outs = [keras.layers.Dense(1, name=name)(h) for name in names]
        m = keras.Model(inp, outs if len(outs) > 1 else outs[0])
        if len(outs) == 1:
            m.compile("sgd", loss="mse", metrics=["mae"])
        else:
            metrics = [["mae"]] * len(outs) if metrics else None
            m.compile("sgd", loss=["mse"] * len(outs), metrics=metrics)
        return m

    calls = {}
    for label, names in (("1 output", ["out"]), ("2 outputs", ["a", "b"])):
        m = model(names, metrics=True)
        x, y = data(BATCH, len(names))
        for _ in range(5):  # traces train and test steps
            m.train_on_batch(x, y)
            m.train_on_batch(x, y, return_dict=True)
            m.test_on_batch(x, y)
            m.metrics_names
        calls[f"{label}|train_on_batch"] = lambda m=m, x=x, y=y: m.train_on_batch(x, y)
        calls[f"{label}|train_on_batch(return_dict=True)"] = (
            lambda m=m, x=x, y=y: m.train_on_batch(x, y, return_dict=True))
        calls[f"{label}|test_on_batch"] = lambda m=m, x=x, y=y: m.test_on_batch(x, y)
        calls[f"{label}|metrics_names"] = lambda m=m: m.metrics_names
        calls[f"{label}|reference"] = lambda m=m: [t.name for t in m.metrics]
    result = per_call(calls, repeat=15)

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append([])

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step: JAX runs ahead otherwise
            self.epochs[-1].append(time.perf_counter())

    for heads in HEADS:
        m = model([f"h{i}" for i in range(heads)], metrics=False)
        x, y = data(BATCH * STEPS, heads)
        clock = Clock()
        m.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[clock])
        # The first epoch traces; steps within an epoch leave out its set-up.
        steps = [b - a for ends in clock.epochs[1:] for a, b in zip(ends, ends[1:])]
        result[f"{heads} heads|fit step"] = statistics.median(steps)

    kerasfix = sys.modules.get("kerasfix")
    result["kerasfix"] = "not imported" if kerasfix is None else kerasfix.status()["effective"]
    result["kerasfix_file"] = getattr(kerasfix, "__file__", None)
    result["keras"], result["backend"] = keras.__version__, keras.config.backend()
    print(json.dumps(result))


def run(arm):
    env = {k: v for k, v in os.environ.items() if k != "KERASFIX"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's start-up chatter
    # This checkout's kerasfix, wherever the environment's install points.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if arm == "kerasfix":
        env["KERASFIX"] = "1"
    out = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
    )
    if out.returncode:
        sys.exit(f"{arm} process failed:\n{out.stderr}")
    result = json.loads(out.stdout.splitlines()[-1])
    if (result["kerasfix"] == "patched") != (arm == "kerasfix"):
        # The .pth line only reports a kerasfix that fails to import.
        sys.exit(f"kerasfix is {result['kerasfix']!r} in the {arm} process:\n{out.stderr}")
    odd = [line for line in out.stderr.splitlines()
           if any(w in line for w in ("Warning", "Error", "kerasfix"))]
    return result, odd


def main(argv=None):
    parser = argparse.ArgumentParser(description="kerasfix per-call overhead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child()

    arms = ["kerasfix", "none"]
    rounds, stderr = [], {arm: set() for arm in arms}
    for r in range(args.rounds):
        this = {}
        for arm in arms if r % 2 == 0 else arms[::-1]:
            this[arm], odd = run(arm)
            stderr[arm].update(odd)
            print(f"round {r + 1}/{args.rounds}: {arm} done", file=sys.stderr)
        rounds.append(this)
    info = rounds[0]["kerasfix"]
    backend = info["backend"]
    limit = 1.05 if backend == "torch" else 1.02

    def row(model, measure, top, bottom, goal):
        """`top` over `bottom` (each an (arm, key)): their medians over the
        rounds, the ratio of those, and the lowest and highest round's ratio."""
        n, d = (statistics.median(r[arm][key] for r in rounds) for arm, key in (top, bottom))
        each = [r[top[0]][top[1]] / r[bottom[0]][bottom[1]] for r in rounds]
        return {"model": model, "measure": measure, "baseline": d, "kerasfix": n,
                "ratio": n / d, "round_min": min(each), "round_max": max(each),
                "goal": goal, "met": None if goal is None else n / d <= goal}

    rows = []
    for key in [k for k in rounds[0]["none"] if "|" in k]:
        model, measure = key.split("|")
        if measure == "reference":
            continue
        if measure == "metrics_names":
            rows.append(row(model, measure, ("kerasfix", key), ("none", key), None))
            rows.append(row(model, "metrics_names / reference read (both kerasfix process)",
                            ("kerasfix", key), ("kerasfix", f"{model}|reference"), 2.0))
        else:
            rows.append(row(model, measure, ("kerasfix", key), ("none", key), limit))
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "keras": info["keras"],
        "backend": backend,
        "rounds": args.rounds,
        "kerasfix in each arm": {arm: rounds[0][arm]["kerasfix"] for arm in arms},
        "kerasfix measured": info["kerasfix_file"],
        "rows": rows,
        "reference read, plain process (s)": {
            k: statistics.median(r["none"][k] for r in rounds)
            for k in rounds[0]["none"] if k.endswith("|reference")},
        "stderr lines naming warnings or kerasfix": {arm: sorted(s) for arm, s in stderr.items()},
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0

    def fmt(s):
        return f"{s * 1e3:.3f} ms" if s >= 1e-4 else f"{s * 1e6:.2f} µs"

    print(f"{report['machine']}, Keras {info['keras']}, {backend}, {args.rounds} rounds; "
          f"kerasfix: {report['kerasfix in each arm']}, {info['kerasfix_file']}\n")
    # Baseline: Keras without kerasfix, or in the reference rows
    # `[m.name for m in model.metrics]` in the kerasfix process.
    print("| model | measure | baseline | kerasfix | ratio (rounds' min-max) | goal |")
    print("|---|---|---|---|---|---|")
    for x in rows:
        goal = "-" if x["goal"] is None else f"≤ {x['goal']:g} {'met' if x['met'] else 'MISSED'}"
        print(f"| {x['model']} | {x['measure']} | {fmt(x['baseline'])} | {fmt(x['kerasfix'])} | "
              f"{x['ratio']:.3f} ({x['round_min']:.3f}-{x['round_max']:.3f}) | {goal} |")
    for arm, lines in report["stderr lines naming warnings or kerasfix"].items():
        for line in lines:
            print(f"{arm} stderr: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

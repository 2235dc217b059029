"""What kerasfix costs each call a user makes, measured; prints figures and goals.

    KERAS_BACKEND=jax python benchmarks/calls.py [--pairs 160] [--processes 16] [--control] [--json]

Two processes run side by side, this script again with `--child`: one with
`KERASFIX=1` (kerasfix on, as its `.pth` line turns it on), one with
`KERASFIX` removed from the environment (kerasfix never imported, so Keras
runs as it is; two models in one process would both pass kerasfix's
wrappers). Once warmed up, both hold all their threads on one CPU. They
take turns of about 20 ms in lockstep, one waiting while the other works,
in an order that flips each turn. A turn times its calls one by one (reads
of microseconds in samples of about 0.5 ms) and keeps its fastest.

Each arm's figure is the 10th percentile of its turns' fastest samples; the
ratio is kerasfix's figure over Keras's. This host runs at a few speeds
that change every few tens of milliseconds: within a turn the fastest calls
agree to about 1 %, while from one turn to the next, even between the two
arms' turns a few milliseconds apart, the floor can move from 164 to
309 µs (a 2-head `fit` step). A ratio of two turns is mostly that move
(the median ratio of paired turns read 0.99-1.03 with kerasfix in neither
arm, its quartiles 0.82-1.26); the fast turns of each arm are the code's
own cost, which kerasfix's work on every call moves as much as any other.
The turns are shared out among `--processes` pairs of processes, started
one pair after another: with kerasfix in neither arm, the fastest turns of
one pair of processes alone (12 turns each) gave ratios of 0.89-1.30, so
the figure pools many pairs. The bracket gives the 5-95 % range of the
ratio when the pairs of processes, and the pairs of turns within each, are
drawn again (a bootstrap): how closely this run pins the ratio down.

Each process, in either arm, starts in a memory layout of its own: an
environment variable of 0-4095 bytes (which moves the stack) and 0-19,999
small lists kept for its life (which move the heap), drawn at random. One
fixed layout per arm makes a difference of its own: with kerasfix in
neither arm, one arm given 3,000 bytes of environment and 20,000 lists read
1.011-1.017 on the 1-output rows (8 pairs of processes), as much as
kerasfix's own cost there. Drawn for each process, a layout is one draw
among many in both arms, not a difference between them. `--control` runs
kerasfix in neither arm (the "kerasfix" column is then a second Keras
alone): what this harness reads where there is no difference, on this
host, that day. At the defaults (Keras 3.15.1, JAX) it read 0.983-1.011,
and every bracket held 1.

Each process builds two small models (Dense 16, batch 32, so the per-call
overhead shows): one output (`loss="mse"`, `metrics=["mae"]`) and two
functional outputs `a`, `b` (`loss=["mse", "mse"]`,
`metrics=[["mae"], ["mae"]]`). After warming up (the first calls trace) a
turn times:

- `train_on_batch(x, y)` (a list result) and with `return_dict=True`;
- `test_on_batch(x, y)`;
- `model.metrics_names`, and for reference `[m.name for m in model.metrics]`,
  which is what Keras's own `metrics_names` does (in the kerasfix process
  `model.metrics` is kerasfix's, as users see it; this pair's ratio is taken
  within the kerasfix process);
- a step of `fit` for a model with N heads (N = 2, 16, 64; each Dense(1) on
  a shared Dense(16), loss "mse" each): a turn is one epoch of 40 steps,
  each step timed from one step's end to the next.

A last column gives the time spent in kerasfix's own functions per call,
from cProfile in the kerasfix process, as a share of the baseline (free
of the host's drift, but high: the profiler slows small functions most;
it leaves out what kerasfix adds inside a traced step, and what its
presence costs outside its own functions); and how many Python frames of
kerasfix's run per call (per step for `fit`), counted with `sys.setprofile`.

Goals: kerasfix / none <= 1.02 per call on TensorFlow and JAX, <= 1.05 on
torch; kerasfix's `metrics_names` <= 2x the reference read. Nothing is
asserted: the figures and goals are printed. `instructions.py` counts the
instructions the same calls execute, which the host's speed does not move.

On a busy host, torch's two intra-op threads make these tiny steps take
5-60 ms at random; `OMP_NUM_THREADS=1`, which both arms inherit, steadies them.
"""

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

FEATURES, HIDDEN, BATCH = 8, 16, 32
HEADS = (2, 16, 64)
STEPS = 40
TURN, SAMPLE = 0.02, 0.0005  # seconds
RESAMPLES = 400
PADDING, BALLAST = 4096, 20000  # bytes of environment, small lists
ballast = None  # the child's, kept for its life
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child():
    """Builds the models, then runs what the parent asks, a line at a time:
    `time <measure> <calls per sample> <samples>` prints a turn's fastest
    sample, seconds per call; `count` only makes the calls (fits: one per
    sample) and `collect` a full garbage collection, both printing 0;
    `own` and `frames` print kerasfix's share; `quit` ends."""
    global ballast
    ballast = [[0] * (i % 8) for i in range(int(os.environ["CALLS_BALLAST"]))]
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

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step: JAX runs ahead otherwise
            self.ends.append(time.perf_counter())

    fits = {}
    for heads in HEADS:
        m = model([f"h{i}" for i in range(heads)], metrics=False)
        x, y = data(BATCH * STEPS, heads)

        def fit(m=m, x=x, y=y):
            clock = Clock()
            m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
            return min(b - a for a, b in zip(clock.ends, clock.ends[1:]))

        fit()  # traces
        fits[f"{heads} heads|fit step"] = fit

    kerasfix = sys.modules.get("kerasfix")
    info = {
        "kerasfix": "not imported" if kerasfix is None else kerasfix.status()["effective"],
        "kerasfix_file": getattr(kerasfix, "__file__", None),
        "keras": keras.__version__,
        "backend": keras.config.backend(),
        "number": {name: sampling(fn) for name, fn in calls.items()},
        "measures": list(calls) + list(fits),
    }
    hold_on_one_cpu()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            return 0
        command, name, per_sample, samples = line.rstrip("\n").split("\t")
        per_sample, samples = int(per_sample), int(samples)
        run = fits[name] if name in fits else (
            lambda: min(timed(calls[name], per_sample) for _ in range(samples)))
        if command == "time":
            print(repr(run()), flush=True)
        elif command == "collect":  # before a count, outside it
            gc.collect()
            print("0", flush=True)
        elif command == "count":  # instructions.py counts what runs here
            for _ in range(samples):
                if name in fits:
                    fits[name]()
                else:
                    timed(calls[name], per_sample)
            print("0", flush=True)
        else:
            calls_made = STEPS if name in fits else per_sample * samples
            measured = own_time if command == "own" else own_frames
            print(repr(measured(run) / calls_made), flush=True)
    return 0


def sampling(fn):
    """Calls per sample (about `SAMPLE` seconds, at least one call) and
    samples per turn (about `TURN` seconds)."""
    once = timed(fn, max(1, round(0.01 / timed(fn, 1))))
    per_sample = max(1, round(SAMPLE / once))
    return per_sample, max(1, round(TURN / (once * per_sample)))


def hold_on_one_cpu():
    """All this process's threads, and those they start, on the last CPU it
    may use: both arms then share one CPU, whatever the scheduler would
    have done with each for its life. Done once warmed up, so that the two
    processes start side by side."""
    if hasattr(os, "sched_setaffinity"):
        cpu = {max(os.sched_getaffinity(0))}
        for thread in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(thread), cpu)
            except ProcessLookupError:
                pass  # the thread ended meanwhile


def own_time(run):
    """Seconds spent in kerasfix's own code (its functions' time less what
    they call) while `run()` runs, under cProfile: high, as the profiler
    slows small Python functions most."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.runcall(run)
    package = os.path.join(ROOT, "kerasfix") + os.sep
    stats = pstats.Stats(profile).stats
    return sum(tottime for (file, _, _), (_, _, tottime, _, _) in stats.items()
               if file.startswith(package))


def own_frames(run):
    """Python frames of kerasfix's own code that run while `run()` runs
    (in this thread, where Keras runs these calls' callbacks)."""
    package = os.path.join(ROOT, "kerasfix") + os.sep
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename.startswith(package):
            count += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


def table_rows(measures, row, limit):
    """A row per measure, `row(model, measure, top, bottom, goal)` giving
    `top` over `bottom` (each an (arm, measure)): kerasfix over Keras, and
    for `metrics_names` also over the reference read in kerasfix's process."""
    rows = []
    for key in measures:
        model, measure = key.split("|")
        if measure == "reference":
            continue
        if measure == "metrics_names":
            rows.append(row(model, measure, ("kerasfix", key), ("none", key), None))
            rows.append(row(model, "metrics_names / reference read (both kerasfix process)",
                            ("kerasfix", key), ("kerasfix", f"{model}|reference"), 2.0))
        else:
            rows.append(row(model, measure, ("kerasfix", key), ("none", key), limit))
    return rows


def figure(floors):
    """The 10th percentile of the turns' fastest samples: what a call costs
    while the host runs at its full speed."""
    return sorted(floors)[len(floors) // 10]


def timed(fn, number):
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t) / number


class Arm:
    """One child process, kerasfix on or not, in a memory layout drawn from
    `layouts` (a `random.Random`)."""

    def __init__(self, name, control, layouts, prefix=()):
        env = {k: v for k, v in os.environ.items() if k != "KERASFIX"}
        env["CALLS_PADDING"] = "x" * layouts.randrange(PADDING)
        env["CALLS_BALLAST"] = str(layouts.randrange(BALLAST))
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's start-up chatter
        # This checkout's kerasfix, wherever the environment's install points.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        if name == "kerasfix" and not control:
            env["KERASFIX"] = "1"
        self.name = name
        self.stderr = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [*prefix, sys.executable, __file__, "--child"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            self.stderr.seek(0)
            sys.exit(f"{self.name} process failed:\n{self.stderr.read()}")
        return line

    def ask(self, measure, number, command="time"):
        per_sample, samples = number
        self.process.stdin.write(f"{command}\t{measure}\t{per_sample}\t{samples}\n")
        self.process.stdin.flush()
        return float(self.read())

    def close(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait()
        self.stderr.seek(0)
        return [line.rstrip() for line in self.stderr
                if any(w in line for w in ("Warning", "Error", "kerasfix"))]


def main(argv=None):
    parser = argparse.ArgumentParser(description="kerasfix per-call overhead")
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--processes", type=int, default=16,
                        help="pairs of processes, one after another, sharing the pairs of turns")
    parser.add_argument("--control", action="store_true",
                        help="kerasfix in neither arm: what this harness reads for no difference")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child()

    times, number, stderr, processes = None, None, {}, []
    layouts = random.Random(0)
    for run in range(args.processes):
        arms = {name: Arm(name, args.control, layouts) for name in ("kerasfix", "none")}
        infos = {name: json.loads(arm.read()) for name, arm in arms.items()}
        for name, info in infos.items():
            if (info["kerasfix"] == "patched") != (name == "kerasfix" and not args.control):
                # The .pth line only reports a kerasfix that fails to import.
                sys.exit(f"kerasfix is {info['kerasfix']!r} in the {name} process")
        info = infos["kerasfix"]
        if times is None:
            number = {m: tuple(n) for m, n in infos["none"]["number"].items()}
            times = {name: {m: [] for m in info["measures"]} for name in arms}
        turns = range(run * args.pairs // args.processes, (run + 1) * args.pairs // args.processes)
        processes.append(turns)
        for pair in turns:
            for measure in info["measures"]:
                order = list(arms) if pair % 2 == 0 else list(arms)[::-1]
                for name in order:
                    times[name][measure].append(arms[name].ask(measure, number.get(measure, (1, 1))))
            if (pair + 1) % 10 == 0:
                print(f"pair {pair + 1}/{args.pairs}", file=sys.stderr)
        if run == args.processes - 1:
            # cProfile's cost swamps a read of microseconds: no figure for those.
            per_call = [m for m in info["measures"] if not m.endswith(("metrics_names", "reference"))]
            own = {measure: statistics.median(
                arms["kerasfix"].ask(measure, number.get(measure, (1, 1)), "own") for _ in range(5))
                for measure in per_call}
            frames = {measure: arms["kerasfix"].ask(measure, number.get(measure, (1, 1)), "frames")
                      for measure in per_call}
        for name, arm in arms.items():
            stderr.setdefault(name, []).extend(arm.close())
    backend = info["backend"]
    limit = 1.05 if backend == "torch" else 1.02

    def row(model, measure, top, bottom, goal):
        """`top` over `bottom` (each an (arm, measure)): each one's figure,
        their ratio, and the 5-95 % range of the ratio when the pairs of
        processes, and the pairs of turns within each, are drawn again."""
        a, b = times[top[0]][top[1]], times[bottom[0]][bottom[1]]
        ratio = figure(a) / figure(b)
        draw = random.Random(0)
        resampled = []
        for _ in range(RESAMPLES):
            turns = []
            for _ in processes:
                pairs = draw.choice(processes)
                turns += [draw.choice(pairs) for _ in pairs]
            resampled.append(figure([a[t] for t in turns]) / figure([b[t] for t in turns]))
        low, *_, high = statistics.quantiles(resampled, n=20)
        return {"model": model, "measure": measure,
                "baseline": figure(b), "kerasfix": figure(a),
                "ratio": ratio, "low": low, "high": high,
                "own": own[top[1]] / figure(b) if top[1] in own else None,
                "frames": frames.get(top[1]),
                "goal": goal, "met": None if goal is None else ratio <= goal}

    rows = table_rows(info["measures"], row, limit)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "keras": info["keras"],
        "backend": backend,
        "pairs": args.pairs,
        "processes": args.processes,
        "kerasfix in each arm": {name: i["kerasfix"] for name, i in infos.items()},
        "kerasfix measured": info["kerasfix_file"],
        "rows": rows,
        "stderr lines naming warnings or kerasfix": stderr,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0

    def fmt(s):
        return f"{s * 1e3:.3f} ms" if s >= 1e-4 else f"{s * 1e6:.2f} µs"

    print(f"{report['machine']}, Keras {info['keras']}, {backend}, {args.pairs} pairs of turns "
          f"in {args.processes} pairs of processes; "
          f"kerasfix: {report['kerasfix in each arm']}, {info['kerasfix_file']}\n")
    # Baseline: Keras without kerasfix, or in the reference rows
    # `[m.name for m in model.metrics]` in the kerasfix process.
    print("| model | measure | baseline | kerasfix | ratio (5-95 % resampled) | kerasfix's own code "
          "| its frames per call | goal |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        own = "-" if x["own"] is None else f"+{x['own']:.1%}"
        count = "-" if x["frames"] is None else f"{x['frames']:.1f}"
        goal = "-" if x["goal"] is None else f"≤ {x['goal']:g} {'met' if x['met'] else 'MISSED'}"
        print(f"| {x['model']} | {x['measure']} | {fmt(x['baseline'])} | {fmt(x['kerasfix'])} | "
              f"{x['ratio']:.3f} ({x['low']:.3f}-{x['high']:.3f}) | {own} | {count} | {goal} |")
    for name, lines in stderr.items():
        for line in lines:
            print(f"{name} stderr: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

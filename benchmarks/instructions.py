"""What kerasfix adds to each call a user makes, counted in instructions.

    KERAS_BACKEND=jax python benchmarks/instructions.py [--calls 50] [--processes 3] [--control] [--json]

Needs valgrind (Debian's `valgrind` package). `calls.py` times the calls,
and this host's speed, which changes every few tens of milliseconds, limits
what its ratios can tell apart; the number of instructions a call executes
does not depend on the host's speed, so this script counts them for the
same models and calls as `calls.py` (its child process, the same memory
layouts drawn): each arm's process runs under callgrind, counting only
while the parent asks for a measure's calls. A call's figure is the count
for 3n calls less the count for n calls, over 2n, so what the asking
itself costs cancels out (for `fit`, 1 and 3 whole fits of 40 steps, per
step: `fit`'s set-up is in the figure). A full garbage collection, not
counted, comes before each count, so both arms count from the same point
of the collector's cycle (a full collection in one arm's count and not the
other's read as +5.8 % on a 64-head TensorFlow step). The two arms of a
pair count at once (`calls.py`'s child holds its threads on the last CPU,
so they share it; valgrind runs a process's threads one at a time anyway),
`--processes` pairs one after another; the table gives kerasfix's figure over Keras's, the median over the pairs and their
range. `--control` runs kerasfix in neither arm: how far two processes'
counts differ with no difference between them (allocation, garbage
collection and backend threads vary a little from process to process).

Instructions are not time: a call that misses the cache more takes longer
at the same count. They are what kerasfix's code adds, free of the host.
Goals as in `calls.py`: ≤ 1.02 per call on TensorFlow and JAX, ≤ 1.05 on
torch; `metrics_names` ≤ 2x Keras's own read. Nothing is asserted.
"""

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import calls


class Counted(calls.Arm):
    """A `calls.py` child under callgrind, counting nothing until asked."""

    def __init__(self, name, control, layouts, folder):
        self.folder = tempfile.mkdtemp(prefix=f"{name}-", dir=folder)
        self.out = os.path.join(self.folder, "callgrind.out")
        prefix = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                  f"--callgrind-out-file={self.out}")
        super().__init__(name, control, layouts, prefix)
        self.info = json.loads(self.read())
        self.callgrind("-i", "on")

    def callgrind(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.process.pid)],
                       check=True, capture_output=True)

    def count(self, measure, number, fit):
        """Instructions executed while the child makes `number` calls
        (`fit`: whole fits)."""
        # From the same point of the collector's cycle in both arms: the
        # next full collection, which scans the whole heap, falls in one
        # arm's count and not the other's otherwise.
        self.ask(measure, (0, 0), "collect")
        self.callgrind("-z")
        self.ask(measure, (1, number) if fit else (number, 1), "count")
        self.callgrind("-d")
        total = 0
        for dump in os.listdir(self.folder):
            path = os.path.join(self.folder, dump)
            with open(path) as lines:
                total += next((int(line.split()[1]) for line in lines
                               if line.startswith(("totals:", "summary:"))), 0)
            os.remove(path)
        return total

    def per_call(self, measure, n):
        """Per call, or per step of `fit` (n whole fits of `calls.STEPS`)."""
        fit = measure.endswith("fit step")
        n = 1 if fit else n
        fewer, more = self.count(measure, n, fit), self.count(measure, 3 * n, fit)
        return (more - fewer) / (2 * n) / (calls.STEPS if fit else 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description="kerasfix per-call instructions")
    parser.add_argument("--calls", type=int, default=50,
                        help="n: each count is of n and 3n calls (fit: of 1 and 3 fits)")
    parser.add_argument("--processes", type=int, default=3, help="pairs of processes")
    parser.add_argument("--control", action="store_true",
                        help="kerasfix in neither arm: what this reads for no difference")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        sys.exit("instructions.py needs valgrind: apt-get install valgrind")

    counts = {"kerasfix": {}, "none": {}}
    layouts = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.processes):
            arms = {name: Counted(name, args.control, layouts, folder) for name in counts}
            for name, arm in arms.items():
                if (arm.info["kerasfix"] == "patched") != (name == "kerasfix" and not args.control):
                    sys.exit(f"kerasfix is {arm.info['kerasfix']!r} in the {name} process")
            info = arms["kerasfix"].info
            with ThreadPoolExecutor(len(arms)) as both:
                for measure in info["measures"]:
                    figures = both.map(lambda arm: arm.per_call(measure, args.calls),
                                       arms.values())
                    for name, figure in zip(arms, figures):
                        counts[name].setdefault(measure, []).append(figure)
            for arm in arms.values():
                arm.close()
            print(f"pair of processes {run + 1}/{args.processes}", file=sys.stderr)
    backend = info["backend"]
    limit = 1.05 if backend == "torch" else 1.02

    def row(model, measure, top, bottom, goal):
        ratios = [a / b for a, b in zip(counts[top[0]][top[1]], counts[bottom[0]][bottom[1]])]
        ratio = statistics.median(ratios)
        return {"model": model, "measure": measure,
                "baseline": statistics.median(counts[bottom[0]][bottom[1]]),
                "kerasfix": statistics.median(counts[top[0]][top[1]]),
                "ratio": ratio, "low": min(ratios), "high": max(ratios),
                "goal": goal, "met": None if goal is None else ratio <= goal}

    rows = calls.table_rows(info["measures"], row, limit)
    report = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "keras": info["keras"],
        "backend": backend,
        "calls": args.calls,
        "processes": args.processes,
        "control": args.control,
        "kerasfix measured": info["kerasfix_file"],
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['machine']}, Keras {info['keras']}, {backend}, {args.processes} pairs of "
          f"processes, n = {args.calls}{', control' if args.control else ''}; "
          f"kerasfix: {info['kerasfix_file']}\n")
    print("| model | measure | baseline | kerasfix | ratio (range over pairs) | goal |")
    print("|---|---|---|---|---|---|")
    for x in rows:
        goal = "-" if x["goal"] is None else f"≤ {x['goal']:g} {'met' if x['met'] else 'MISSED'}"
        print(f"| {x['model']} | {x['measure']} | {x['baseline']:,.0f} | {x['kerasfix']:,.0f} | "
              f"{x['ratio']:.4f} ({x['low']:.4f}-{x['high']:.4f}) | {goal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

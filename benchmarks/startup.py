"""What the start-up hook and `import kerasfix` cost; prints figures.

    python benchmarks/startup.py

Run it with the interpreter of an environment kerasfix is installed in:
its `kerasfix.pth` runs at every interpreter start.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import timeit
from importlib import metadata
from pathlib import Path


def fresh(code, env, runs):
    """Median wall time of `python -c code` in new interpreters, in ms."""
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        )
        times.append(float(out.stdout.split()[0]) * 1e3)
    return statistics.median(times)


def main():
    pth = Path(sysconfig.get_paths()["purelib"]) / "kerasfix.pth"
    if not pth.exists():
        sys.exit(f"{pth} not found: pip install kerasfix into this environment")
    line = pth.read_text().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    saved = os.environ.pop("KERASFIX", None)
    number = 100_000
    per_line_us = timeit.timeit(line, number=number) / number * 1e6
    if saved is not None:
        os.environ["KERASFIX"] = saved
    imported = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        env=env, capture_output=True, text=True,
    ).stderr
    names = {row.split("|")[-1].strip() for row in imported.splitlines()[1:]}
    pulled_in = sorted(
        n for n in names if n.split(".")[0] in ("kerasfix", "wrapt", "keras")
    )
    timer = "import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)"
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "wrapt": metadata.version("wrapt"),
        "pth_line_with_KERASFIX_unset_us": round(per_line_us, 3),
        "modules_the_pth_imports_when_unset": pulled_in,
        "import_kerasfix_ms": round(fresh(timer.format("import kerasfix"), dict(env, KERASFIX="0"), 15), 2),
        "import_wrapt_ms": round(fresh(timer.format("import wrapt"), env, 15), 2),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

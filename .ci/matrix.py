"""The test matrix: one virtualenv per Keras release line, every backend.

    python .ci/matrix.py                 # every environment in .ci/envs
    python .ci/matrix.py --subset ci     # what .ci/run runs
    python .ci/matrix.py --envs 3.15 3.6 --backends jax
    python .ci/matrix.py --table         # README table from the last run
    python .ci/matrix.py --repin-nightly # pin the newest keras-nightly

Virtualenvs live outside the clone, in $KERASFIX_VENVS (default
~/.cache/kerasfix/venvs), named by the hash of their requirements file, and
are reused until that file changes. Results go to .ci/matrix-results.json.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / ".ci" / "envs"
RESULTS = ROOT / ".ci" / "matrix-results.json"
REPORTS = ROOT / ".ci" / "reports"
VENVS = Path(
    os.environ.get("KERASFIX_VENVS", Path.home() / ".cache" / "kerasfix" / "venvs")
)
TOOLS = ["pytest", "pytest-xdist", "hypothesis", "wrapt", "setuptools>=70.1"]
_saving = threading.Lock()
# What CI runs, within its time limit: the nightly on every backend and 3.15
# on JAX (3.15 on TensorFlow is .ci/run's first step, the README's
# command); on TensorFlow 3.6, 3.4 and 3.0, the flat-list adapters of
# `_adapters` (3.6 weights the per-output losses, 3.4 lists sublayers'
# metrics, 3.0 averages `loss` per batch); 3.0 on JAX, where kerasfix
# declines. Longest first, so the two jobs end together. The full matrix
# adds the other rows; of these releases, 3.15 on torch, 3.6 on JAX and
# torch and 3.4 on JAX, whose backends' code paths the nightly's rows run
# (a `.ci/run` of 13 rows outgrew CI's 90 minutes on a slow day, one of 10
# took 80).
CI_SUBSET = [
    ("nightly", "tensorflow"),
    ("nightly", "jax"),
    ("3.15", "jax"),
    ("3.0", "tensorflow"),
    ("3.6", "tensorflow"),
    ("3.4", "tensorflow"),
    ("nightly", "torch"),
    ("3.0", "jax"),
]


NIGHTLY = ENVS / "keras-nightly.txt"
NO_DEPS = "# no-deps"


def release_key(name):
    """Sorts release lines oldest first, "nightly" after every release."""
    return (1,) if name == "nightly" else (0, *map(int, name.split(".")))


def environments():
    """{"3.15": (requirements file, [backends])}, newest first."""
    found = {}
    for path in ENVS.glob("keras-*.txt"):
        header = path.read_text().splitlines()[0]
        backends = header.removeprefix("# backends:").split()
        found[path.stem.removeprefix("keras-")] = (path, backends)
    return dict(sorted(found.items(), key=lambda kv: release_key(kv[0]), reverse=True))


def venv_for(requirements):
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    return VENVS / f"{requirements.stem}-{digest}"


def log(message):
    print(f"[matrix {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pip(python, *args):
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"pip {' '.join(args)} failed in {python}")


def build(name, requirements):
    """The env's python, building the virtualenv if it is not there yet."""
    venv = venv_for(requirements)
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        log(f"building {venv} (a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        lines = requirements.read_text().splitlines()
        cut = lines.index(NO_DEPS) if NO_DEPS in lines else len(lines)
        with_deps = [l for l in lines[:cut] if l and not l.startswith("#")]
        no_deps = [l for l in lines[cut + 1 :] if l and not l.startswith("#")]
        pip(python, "install", "-q", *with_deps, *TOOLS)
        if no_deps:
            # Both keras and keras-nightly own keras/: the nightly replaces it.
            pip(python, "uninstall", "-y", "-q", "keras", "tf-keras")
            pip(python, "install", "-q", "--no-deps", *no_deps)
        (venv / ".complete").touch()
    return python


def install_kerasfix(python):
    """This checkout, editable, so its start-up hook and plugin are live."""
    pip(python, "install", "-q", "--no-deps", "--force-reinstall", "-e", str(ROOT))


def ensure(name, requirements):
    python = build(name, requirements)
    install_kerasfix(python)
    return python


def counts(junit):
    """(passed, failed, skipped, oracle) from a JUnit report; `oracle` counts
    the passed tests marked `oracle`: those that compared with tf-keras."""
    tree = ET.parse(junit)
    passed = failed = skipped = oracle = 0
    for case in tree.iter("testcase"):
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failed += 1
        elif "skipped" in outcome:
            skipped += 1
        else:
            passed += 1
            marked = case.findall("properties/property[@name='oracle']")
            oracle += bool(marked)
    return passed, failed, skipped, oracle


def run(name, backend, python):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERASFIX", None)
    status = subprocess.run(
        [str(python), "-m", "kerasfix", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    info = json.loads(status.stdout) if status.returncode == 0 else {}
    REPORTS.mkdir(exist_ok=True)
    junit = REPORTS / f"keras-{name}-{backend}.xml"
    started = time.monotonic()
    done = subprocess.run(
        # -n 0: the matrix runs its jobs side by side instead of xdist workers.
        [str(python), "-m", "pytest", "-q", "-n", "0", "-p", "no:randomly", f"--junitxml={junit}"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = round(time.monotonic() - started)
    (REPORTS / f"keras-{name}-{backend}.log").write_text(done.stdout + done.stderr)
    passed, failed, skipped, oracle = counts(junit) if junit.exists() else (0, 1, 0, 0)
    result = {
        "keras": info.get("keras"),
        "backend": backend,
        "effective": info.get("effective", "error"),
        "internals": info.get("internals"),
        "passed": passed,
        "failed": failed + (done.returncode not in (0, 5) and failed == 0),
        "skipped": skipped,
        "oracle": oracle,
        "seconds": seconds,
        "date": datetime.date.today().isoformat(),
    }
    log(
        f"keras {name} x {backend}: {result['effective']}, {passed} passed, "
        f"{result['failed']} failed, {skipped} skipped, {seconds}s"
    )
    with _saving:  # after every run, so an interrupted matrix keeps its rows
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        saved[f"{name}/{backend}"] = result
        RESULTS.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return f"{name}/{backend}", result


def table(results):
    rows = [
        "| Keras | backend | kerasfix | tests passed / failed / skipped | tf-keras oracle tests passed | run on |",
        "|---|---|---|---|---|---|",
    ]
    order = sorted(
        results.items(),
        key=lambda kv: (release_key(kv[0].split("/")[0]), kv[1]["backend"]),
        reverse=True,
    )
    for _, r in order:
        rows.append(
            f"| {r['keras']} | {r['backend']} | {r['effective']} | "
            f"{r['passed']} / {r['failed']} / {r['skipped']} | {r['oracle'] or '-'} | {r['date']} |"
        )
    return "\n".join(rows)


def own_tests_table(results):
    rows = [
        "| Keras | own tests | pass without kerasfix | pass with | listed exceptions | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(results.values(), key=lambda r: r["keras"], reverse=True):
        if r["status"] == "not run":
            rows.append(f"| {r['keras']} | - | - | - | - | not run |")
            continue
        rows.append(
            f"| {r['keras']} | {r['tests']} | {r['passed_without']} | "
            f"{r['passed_with']} | {len(r['exceptions'])} | {r['status']} |"
        )
    return "\n".join(rows)


def replace_between(text, marker, body):
    return re.sub(
        rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)",
        lambda m: m.group(1) + body + "\n" + m.group(2),
        text,
        flags=re.S,
    )


def write_table():
    readme = ROOT / "README.md"
    text = replace_between(readme.read_text(), "matrix", table(json.loads(RESULTS.read_text())))
    own = ROOT / ".ci" / "keras-own-tests-results.json"
    if own.exists():
        text = replace_between(text, "keras-own", own_tests_table(json.loads(own.read_text())))
    readme.write_text(text)
    log("README tables written from the last results")


def repin_nightly():
    """Rewrites the nightly pins to the newest keras-nightly and tf-keras-nightly."""
    text = NIGHTLY.read_text()
    for package in ("keras-nightly", "tf-keras-nightly"):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "--pre", package],
            capture_output=True, text=True, check=True,
        )
        newest = re.search(rf"^{package} \((\S+)\)", done.stdout, re.M).group(1)
        text = re.sub(rf"^{package}==\S+$", f"{package}=={newest}", text, flags=re.M)
        log(f"{package}=={newest}")
    NIGHTLY.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="*", help="release lines, in this order, e.g. 3.15 3.6")
    parser.add_argument("--backends", nargs="*", help="tensorflow, jax, torch")
    parser.add_argument("--subset", choices=["ci"], help="the CI subset")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--table", action="store_true", help="only rewrite README")
    parser.add_argument(
        "--repin-nightly", action="store_true", help="pin the newest keras-nightly"
    )
    args = parser.parse_args(argv)
    if args.table:
        write_table()
        return 0
    if args.repin_nightly:
        repin_nightly()
        return 0
    envs = environments()
    if args.subset == "ci":
        plan = CI_SUBSET
    else:
        plan = [
            (name, backend)
            for name in args.envs or envs
            for backend in envs[name][1]
            if not args.backends or backend in args.backends
        ]
    names = list(dict.fromkeys(name for name, _ in plan))
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        built = pool.map(lambda name: build(name, envs[name][0]), names)
        pythons = dict(zip(names, built))
    for name in names:
        install_kerasfix(pythons[name])
    log("running: " + ", ".join(f"{n} x {b}" for n, b in plan))
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(lambda nb: run(*nb, pythons[nb[0]]), plan))
    failed = [k for k, r in results.items() if r["failed"]]
    log(f"{len(results)} runs, {len(failed)} with failures {failed or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

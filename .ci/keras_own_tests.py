"""Keras's own compile/trainer/model tests, without and with kerasfix.

    python .ci/keras_own_tests.py --envs 3.15 3.6 [--keras-git DIR]

The test files are taken at run time from the installed Keras wheel when it
ships them (3.15 does), else from a Keras git repository (`--keras-git`, or
$KERAS_GIT_DIR) at the installed release's tag; they are never copied into
this repository. Without either, the check says NOT RUN.

Every test that passes without kerasfix must pass with `KERASFIX=1` (set in
the environment, so the start-up hook does the patching), except those
listed with a reason in .ci/keras-own-test-exceptions.txt.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import matrix  # noqa: E402

FILES = (
    "keras/src/trainers/compile_utils_test.py",
    "keras/src/trainers/trainer_test.py",
    "keras/src/models/model_test.py",
)
EXCEPTIONS = matrix.ROOT / ".ci" / "keras-own-test-exceptions.txt"
RESULTS = matrix.ROOT / ".ci" / "keras-own-tests-results.json"


def exceptions():
    """{test id: reason}; lines are `release line | test id | reason`."""
    found = {}
    for line in EXCEPTIONS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            release, test, reason = (part.strip() for part in line.split("|", 2))
            found[(release, test)] = reason
    return found


def fetch_sources(python, version, keras_git, into):
    """Copies the test files into `into`; returns where they came from."""
    site = subprocess.run(
        [str(python), "-c", "import keras, os; print(os.path.dirname(keras.__file__))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    installed = [Path(site).parent / f for f in FILES]
    if all(p.exists() for p in installed):
        for source, name in zip(installed, FILES):
            shutil.copy(source, into / Path(name).name)
        return f"the keras {version} wheel"
    if keras_git:
        for name in FILES + ("conftest.py",):
            text = subprocess.run(
                ["git", "--git-dir", keras_git, "show", f"v{version}:{name}"],
                capture_output=True, text=True,
            )
            if text.returncode != 0:
                return None
            (into / Path(name).name).write_text(text.stdout)
        return f"git tag v{version} of {keras_git}"
    return None


def outcomes(python, sources, kerasfix_on):
    """{test: outcome} of one run, in its own copy of the sources, so the
    runs without and with kerasfix can go side by side."""
    where = sources.with_name(f"{sources.name}-kerasfix-{kerasfix_on}")
    shutil.copytree(sources, where)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERASFIX", None)
    if kerasfix_on:
        env["KERASFIX"] = "1"
    junit = where / f"junit-{kerasfix_on}.xml"
    subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={junit}", f"--basetemp={where / 'tmp'}", "."],
        cwd=where, env=env, capture_output=True, text=True,
    )
    found = {}
    for case in ET.parse(junit).iter("testcase"):
        test = f"{case.get('classname').split('.')[-1]}::{case.get('name')}"
        tags = {child.tag for child in case}
        found[test] = (
            "failed" if tags & {"failure", "error"}
            else "skipped" if "skipped" in tags else "passed"
        )
    return found


def check(name, keras_git):
    requirements = matrix.environments()[name][0]
    python = matrix.ensure(name, requirements)
    version = subprocess.run(
        [str(python), "-c", "import keras; print(keras.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "sources"
        where.mkdir()
        origin = fetch_sources(python, version, keras_git, where)
        if origin is None:
            print(
                f"NOT RUN: Keras {version}'s own tests: its wheel has no tests "
                "and no Keras git repository was given (--keras-git)."
            )
            return {"keras": version, "status": "not run"}
        print(f"Keras {version}: own tests from {origin}")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            before, after = pool.map(lambda on: outcomes(python, where, on), (False, True))
    allowed = exceptions()
    regressed, excused = [], []
    for test, outcome in before.items():
        if outcome == "passed" and after.get(test) != "passed":
            (excused if (name, test) in allowed else regressed).append(test)
    passed = sum(o == "passed" for o in after.values())
    print(
        f"Keras {version}: {len(before)} tests; {sum(o == 'passed' for o in before.values())} "
        f"pass without kerasfix, {passed} with; {len(excused)} listed exceptions"
    )
    for test in excused:
        print(f"  exception  {test}: {allowed[(name, test)]}")
    for test in regressed:
        print(f"  REGRESSED  {test}")
    return {
        "keras": version,
        "status": "failed" if regressed else "passed",
        "tests": len(before),
        "passed_without": sum(o == "passed" for o in before.values()),
        "passed_with": passed,
        "exceptions": excused,
        "regressed": regressed,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["3.15", "3.6"])
    parser.add_argument("--keras-git", default=os.environ.get("KERAS_GIT_DIR"))
    args = parser.parse_args(argv)
    results = {name: check(name, args.keras_git) for name in args.envs}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.update(results)
    RESULTS.write_text(json.dumps(previous, indent=1, sort_keys=True) + "\n")
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

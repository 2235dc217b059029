"""The pytest plugin, driven through pytester in a subprocess."""

import pytest

import pytest_kerasfix

pytest.importorskip("keras")

MODEL_TEST = """
import kerasfix

def test_mode(kerasfix_mode):
    assert kerasfix.status()["requested_mode"] == {expected!r}
"""


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.delenv("KERASFIX", raising=False)
    monkeypatch.setenv("KERASFIX", "0")  # only the plugin may switch it on

    def run(*args, ini=None, expected=None):
        if ini is not None:
            pytester.makeini(f"[pytest]\nkerasfix = {ini}\n")
        pytester.makepyfile(MODEL_TEST.format(expected=expected))
        return pytester.runpytest_subprocess(*args)

    return run


def test_option_enables_the_session_and_shows_a_header(run):
    result = run("--kerasfix=weighted", expected="weighted")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["kerasfix: mode=weighted, keras=*, backend=*, effective=*"])


def test_ini_setting_enables_the_session(run):
    result = run(ini="unweighted", expected="unweighted")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["kerasfix: mode=unweighted*"])


def test_plugin_is_inert_unless_used(run):
    result = run(expected=None)
    result.assert_outcomes(passed=1)
    assert "kerasfix:" not in result.stdout.str()


def test_bad_mode_is_a_usage_error(run):
    result = run("--kerasfix=raw", expected=None)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'raw'*"])


def test_fixture_switches_one_test_and_restores(pytester, monkeypatch):
    monkeypatch.setenv("KERASFIX", "0")
    pytester.makepyfile(
        """
        import kerasfix

        def test_switch(kerasfix_mode):
            assert kerasfix_mode("weighted")["requested_mode"] == "weighted"
            assert kerasfix_mode(None)["requested_mode"] is None

        def test_after():
            assert kerasfix.status()["requested_mode"] == "unweighted"
        """
    )
    result = pytester.runpytest_subprocess("--kerasfix=unweighted", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_xdist_workers_run_with_the_session_mode(run):
    pytest.importorskip("xdist")
    result = run("--kerasfix=weighted", "-n", "2", expected="weighted")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "value,expected",
    [("1", "unweighted"), ("on", "unweighted"), ("TRUE", "unweighted"),
     ("weighted", "weighted"), ("0", None), ("off", None)],
)
def test_option_takes_what_the_environment_variable_takes(pytester, value, expected):
    # Parsed in this process (a new one per value would import Keras each
    # time); the tests above show the parsed mode is what the session gets.
    config = pytester.parseconfig(f"--kerasfix={value}")
    assert pytest_kerasfix._session_mode(config) == expected

"""pytest plugin: `--kerasfix=MODE`, ini `kerasfix = MODE`, `kerasfix_mode`.

Registered through `pytest11`; it imports kerasfix only when one of these
is used, so installing kerasfix changes nothing in other test suites.
"""

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("kerasfix")
    group.addoption(
        "--kerasfix",
        metavar="MODE",
        default=None,
        help="enable kerasfix for the session: any KERASFIX value "
        "(1, on, true, unweighted, weighted; 0, off, false for off).",
    )
    parser.addini("kerasfix", "kerasfix mode for the session (or off).")


def _asked(config):
    return config.getoption("kerasfix") or config.getini("kerasfix") or None


def _session_mode(config):
    """The mode asked for, parsed as a `KERASFIX` value is (None for off)."""
    from kerasfix import _config

    try:
        return _config.parse_mode(_asked(config), "--kerasfix / ini kerasfix")
    except ValueError as error:
        raise pytest.UsageError(str(error))


def pytest_configure(config):
    if _asked(config) is None:
        return
    import kerasfix

    mode = _session_mode(config)
    if mode is None:
        kerasfix.disable()  # importing kerasfix alone would switch it on
    else:
        kerasfix.enable(mode)


def pytest_report_header(config):
    if _asked(config) is None or _session_mode(config) is None:
        return None
    import kerasfix

    info = kerasfix.status()
    return (
        f"kerasfix: mode={info['requested_mode']}, keras={info['keras']}, "
        f"backend={info['backend']}, effective={info['effective']}"
    )


@pytest.fixture
def kerasfix_mode():
    """Call with a mode (or None for off) to switch kerasfix for this test;
    the state before the test comes back afterwards."""
    import kerasfix
    from kerasfix import _config

    before = _config.mode

    def switch(mode):
        if mode is None:
            kerasfix.disable()
        else:
            kerasfix.enable(mode)
        return kerasfix.status()

    yield switch
    if before is None:
        kerasfix.disable()
    else:
        kerasfix.enable(before)

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
        help="enable kerasfix for the session: unweighted or weighted.",
    )
    parser.addini("kerasfix", "kerasfix mode for the session (or off).")


def _session_mode(config):
    mode = config.getoption("kerasfix") or config.getini("kerasfix") or None
    if mode in ("off", "0", "false"):
        return None
    return mode


def pytest_configure(config):
    mode = _session_mode(config)
    if mode is None:
        return
    import kerasfix

    try:
        kerasfix.enable(mode)
    except ValueError as error:
        raise pytest.UsageError(f"--kerasfix / ini kerasfix: {error}")


def pytest_report_header(config):
    if _session_mode(config) is None:
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

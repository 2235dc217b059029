import os

import pytest

# Tests choose kerasfix's state themselves; a KERASFIX in the caller's
# environment must not decide it for them.
os.environ.pop("KERASFIX", None)
os.environ.pop("KERASFIX_STRICT", None)

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _kerasfix_off():
    """Every test starts and ends with Keras unpatched."""
    import kerasfix

    kerasfix.disable()
    yield
    kerasfix.disable()


@pytest.fixture(autouse=True)
def _oracle_property(request, record_property):
    """Marks the JUnit report of a test that compares with tf-keras, for the
    matrix's oracle column (it counts those that passed)."""
    if request.node.get_closest_marker("oracle"):
        record_property("oracle", "1")


@pytest.fixture
def patched():
    import kerasfix

    kerasfix.enable()
    if kerasfix.status()["effective"] != "patched":
        pytest.skip(f"kerasfix does not patch here: {kerasfix.status()}")
    return kerasfix


@pytest.fixture
def patch_supported():
    """Skips where kerasfix declines this Keras; leaves kerasfix off."""
    import kerasfix

    kerasfix.enable()
    status = kerasfix.status()
    kerasfix.disable()
    if status["effective"] != "patched":
        pytest.skip(f"kerasfix does not patch here: {status['internals']}")

"""kerasfix: Keras 2's per-output loss metrics on every Keras 3 release.

Importing kerasfix switches it on (mode from `KERASFIX`, "unweighted" when
unset); `KERASFIX=0` keeps it off. The patch lands when Keras's
`CompileLoss` module is imported, or at once if it already was.
"""

import os
import sys

from kerasfix import _adapters, _config, _hook
from kerasfix._config import (
    ENV_VAR,
    MODES,
    STRICT_ENV_VAR,
    KerasfixError,
    KerasfixWarning,
)

__version__ = "0.2.0"
__all__ = [
    "ENV_VAR",
    "MODES",
    "STRICT_ENV_VAR",
    "KerasfixError",
    "KerasfixWarning",
    "disable",
    "enable",
    "status",
]


def enable(mode="unweighted"):
    """Reports per-output losses as Keras 2 did, on models compiled from now.

    `mode="unweighted"` is Keras 2 (the raw loss of each output);
    `mode="weighted"` is Keras 3.5/3.6 (loss x loss weight). Calling it again
    with the same mode does nothing; with another mode it changes what the
    next traced step records. Models whose loss was built before keep Keras's
    own metrics until they are compiled again.
    """
    _config.check_mode(mode)
    with _config.lock:
        _config.mode = mode
        _config.strict = _config.strict_from_env(os.environ)
        _hook.install()


def disable():
    """Restores Keras exactly as it was; models go back to Keras's metrics."""
    with _config.lock:
        _config.mode = None
        # Nothing was patched if the patch module was never loaded; loading
        # it would import wrapt for nothing.
        if "kerasfix._patch" in sys.modules:
            sys.modules["kerasfix._patch"].undo()


def status():
    """What kerasfix does in this process, as a dict.

    Keys: kerasfix, keras, backend, internals, requested_mode, effective,
    mechanisms. `effective` is "patched" (Keras 2 semantics in force),
    "partial" (some mechanisms off: `mechanisms` says which and why),
    "upstream" (kerasfix off), "native" (Keras 2 itself), "unsupported"
    (kerasfix declined this Keras) or "no keras". `mechanisms` maps each
    of kerasfix's mechanisms to "on", "off: <why>" (an internal it needs is
    missing) or "not on <backend>: <why>" (the backend rules it out; not
    `partial`) while kerasfix is on.
    Imports Keras to find out.
    """
    keras_version = _adapters.keras_version()
    info = {
        "kerasfix": __version__,
        "keras": keras_version,
        "backend": None,
        "internals": None,
        "requested_mode": _config.mode,
        "effective": "no keras",
        "mechanisms": None,
    }
    if keras_version is None:
        return info
    if int(keras_version.split(".")[0]) < 3:
        info["effective"] = "native"
        return info
    import importlib

    importlib.import_module(_adapters.MODELS)
    from keras.src import backend

    info["backend"] = backend.backend()
    if _hook.failed is not None:
        info["internals"] = _hook.failed
        info["effective"] = "unsupported"
        return info
    from kerasfix import _patch

    if _patch._adapter is not None:
        info["internals"] = (
            f"{_patch._adapter.name} (Keras {_patch._adapter.releases})"
        )
        info["mechanisms"] = {name: "on" for name in _patch.MECHANISMS}
        for name, why in _patch.not_here.items():
            info["mechanisms"][name] = f"not on {info['backend']}: {why}"
        for name, why in _patch.off.items():
            info["mechanisms"][name] = f"off: {why}"
        info["effective"] = "partial" if _patch.off else "patched"
    elif _patch._declined is not None:
        info["internals"] = _patch._declined
        info["effective"] = "unsupported"
    else:
        info["effective"] = "upstream"
    return info


def _enable_from_env():
    mode = _config.mode_from_env(os.environ)
    if mode is not None or os.environ.get(ENV_VAR) is None:
        enable(mode or "unweighted")


_enable_from_env()

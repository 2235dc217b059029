"""What kerasfix is asked for: the one place that turns a mode name or a
`KERASFIX` value into a mode, and the mode in force.

It imports nothing heavy, so `import kerasfix` stays cheap until Keras is
imported (wrapt 2 alone imports asyncio).
"""

import threading

ENV_VAR = "KERASFIX"
STRICT_ENV_VAR = "KERASFIX_STRICT"

MODES = ("unweighted", "weighted")

_OFF = ("", "0", "off", "false")
_ON = ("1", "on", "true")
_UNWEIGHTED = _ON + ("unweighted",)
_WEIGHTED = ("weighted",)
ALLOWED = _OFF[1:] + _UNWEIGHTED + _WEIGHTED

lock = threading.RLock()
mode = None  # "unweighted" | "weighted" | None (off)
strict = False


class KerasfixWarning(UserWarning):
    """kerasfix declined to patch, or changed what Keras would have done."""


class KerasfixError(RuntimeError):
    """kerasfix could not patch and `KERASFIX_STRICT` forbids going on."""


def mode_from_env(environ):
    """The mode `KERASFIX` asks for, or None when it is unset or off."""
    raw = environ.get(ENV_VAR)
    return None if raw is None else parse_mode(raw, ENV_VAR)


def parse_mode(raw, source=ENV_VAR):
    """The mode a `KERASFIX` value names (None for off); every way of
    asking for a mode (`KERASFIX`, `pytest --kerasfix`) takes these values."""
    value = raw.strip().lower()
    if value in _OFF:
        return None
    if value in _UNWEIGHTED:
        return "unweighted"
    if value in _WEIGHTED:
        return "weighted"
    raise ValueError(
        f"{source}={raw!r} is not a kerasfix mode; "
        f"use one of: {', '.join(ALLOWED)} (or leave it unset)."
    )


def strict_from_env(environ):
    """Whether `KERASFIX_STRICT` asks for errors; it takes `KERASFIX`'s
    on/off words, so `KERASFIX_STRICT=yes` is an error, not silently off."""
    value = environ.get(STRICT_ENV_VAR, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(
        f"{STRICT_ENV_VAR}={environ[STRICT_ENV_VAR]!r} is not an on/off value; "
        f"use one of: {', '.join(_OFF[1:] + _ON)} (or leave it unset)."
    )


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(
            f"kerasfix mode must be one of {', '.join(map(repr, MODES))}; "
            f"got {mode!r}."
        )
    return mode


_warned = set()


def warn_once(message):
    """Warns with `message` the first time this process sees it."""
    import warnings

    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, KerasfixWarning, stacklevel=3)

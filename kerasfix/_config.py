"""The one place that turns a mode name or `KERASFIX` value into a mode."""

ENV_VAR = "KERASFIX"
STRICT_ENV_VAR = "KERASFIX_STRICT"

MODES = ("unweighted", "weighted")

_OFF = ("", "0", "off", "false")
_UNWEIGHTED = ("1", "on", "true", "unweighted")
_WEIGHTED = ("weighted",)
ALLOWED = _OFF[1:] + _UNWEIGHTED + _WEIGHTED


def mode_from_env(environ):
    """The mode `KERASFIX` asks for, or None when it is unset or off."""
    raw = environ.get(ENV_VAR)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _OFF:
        return None
    if value in _UNWEIGHTED:
        return "unweighted"
    if value in _WEIGHTED:
        return "weighted"
    raise ValueError(
        f"{ENV_VAR}={raw!r} is not a kerasfix mode; "
        f"use one of: {', '.join(ALLOWED)} (or leave it unset)."
    )


def strict_from_env(environ):
    return environ.get(STRICT_ENV_VAR, "").strip().lower() in _UNWEIGHTED[:3]


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(
            f"kerasfix mode must be one of {', '.join(map(repr, MODES))}; "
            f"got {mode!r}."
        )
    return mode

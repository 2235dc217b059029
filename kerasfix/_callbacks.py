"""Keras 2's direction for kerasfix's per-output losses in built-in callbacks.

Keras 2 minimised every monitor that was not an accuracy. Keras 3's
`_set_monitor_op` (`mode="auto"`) knows only `loss` and compiled metrics
with a direction, so `EarlyStopping(monitor="val_a_loss")` raises there.
For a monitor that is one of the per-output losses kerasfix made for the
callback's model, kerasfix runs Keras's own code as if `mode="min"` had
been passed; every other monitor keeps Keras's behaviour, errors included.
"""

from kerasfix import _adapters, _config, _loss_metrics, _wrapping


def _is_our_loss(callback):
    # `_set_monitor_op` runs at the end of an epoch in every release that
    # has it, so the model is set and its loss metrics are made.
    model = getattr(callback, "model", None)
    if model is None:
        return False
    names = _loss_metrics.metric_names(model)
    monitor = callback.monitor
    # An output may itself be named `val_b`: its training loss is `val_b_loss`.
    return monitor in names or (monitor.startswith("val_") and monitor[4:] in names)


def _set_monitor_op(wrapped, instance, args, kwargs):
    if _config.mode is None or instance.mode != "auto" or not _is_our_loss(instance):
        return wrapped(*args, **kwargs)
    instance.mode = "min"
    try:
        return wrapped(*args, **kwargs)
    finally:
        instance.mode = "auto"


def install(callbacks_module):
    """Wraps every built-in callback class that infers a direction; returns
    why it cannot here, or None."""
    setters = _adapters.direction_setters(callbacks_module)
    if not setters:
        return "no callback class defines _set_monitor_op"
    for cls in setters:
        _wrapping.wrap_method(cls, "_set_monitor_op", _set_monitor_op)
    return None

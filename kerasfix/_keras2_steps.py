"""Keras 2's `compiled_loss` and `compiled_metrics` in a custom step.

The Keras 2 custom-`fit` idiom computes `self.compiled_loss(y, y_pred,
regularization_losses=self.losses)`, calls
`self.compiled_metrics.update_state(y, y_pred)` and returns
`{m.name: m.result() for m in self.metrics}`. Keras 3 keeps both names as
shims in its TensorFlow trainer only (there is neither on JAX or torch):
`compiled_loss` returns `compute_loss`'s total and updates no tracker, and
`compiled_metrics.update_state` feeds `y_pred` to every `Mean` of the model,
the `loss` tracker and the per-output loss metrics included.

As tf-keras's `LossesContainer`, `compiled_loss` now also updates the `loss`
tracker with that total, weighted by the batch size; the per-output loss
metrics are updated as the total is computed (kerasfix's CompileLoss
patch). The total itself, what is trained on, stays Keras's own:
`compute_loss` adds `self.losses` whatever `regularization_losses` says, so
the idiom's `regularization_losses=self.losses` is counted once. Where a
step leaves `regularization_losses` out, Keras 2 logged the compiled losses
alone, and so does the tracker (the total still carries `self.losses`).
`compiled_metrics.update_state` updates the compiled metrics only, per
output, as tf-keras's `MetricsContainer` did.
"""

from kerasfix import _adapters, _config, _wrapping

NOT_OFF_TENSORFLOW = (
    "Keras 3 has `compiled_loss` and `compiled_metrics` on TensorFlow only; "
    "a step on this backend uses Keras 3's `compute_loss` and `compute_metrics`"
)

_unscale = None  # Keras 3.8+'s unscale_loss_for_distribution, else None


def _bind_loss(y, y_pred, sample_weight=None, regularization_losses=None):
    return y, y_pred, regularization_losses


def _bind_metrics(y, y_pred, sample_weight=None):
    return y, y_pred, sample_weight


def _batch_size(y, y_pred):
    """The first target's dynamic batch size, as tf-keras weighed the
    `loss` tracker by (the first output's where there is no target)."""
    from keras.src import ops

    for leaf in _adapters.tree().flatten(y) + _adapters.tree().flatten(y_pred):
        if getattr(leaf, "ndim", None):
            return ops.shape(leaf)[0]
    return None


def _compiled_loss(wrapped, instance, args, kwargs):
    total = wrapped(*args, **kwargs)
    tracker = getattr(instance, "_loss_tracker", None)
    if _config.mode is None or tracker is None or total is None:
        return total
    y, y_pred, regularization_losses = _bind_loss(*args, **kwargs)
    value = total if _unscale is None else _unscale(total)
    if regularization_losses is None and instance.losses:
        from keras.src import ops

        # As Keras's `compute_loss` added them: each summed, in floatx.
        added = [ops.sum(ops.cast(loss, value.dtype)) for loss in instance.losses]
        value = value - ops.sum(ops.stack(added))
    tracker.update_state(value, sample_weight=_batch_size(y, y_pred))
    return total


def _compiled_metrics_update_state(wrapped, instance, args, kwargs):
    # Keras's deprecation warning goes with its loop: it advises updating
    # every metric of `self.metrics` with `(y, y_pred)`, the loss trackers too.
    if _config.mode is None:
        return wrapped(*args, **kwargs)
    compile_metrics = getattr(instance, "_compile_metrics", None)
    if compile_metrics is not None:
        y, y_pred, sample_weight = _bind_metrics(*args, **kwargs)
        compile_metrics.update_state(y, y_pred, sample_weight=sample_weight)
    return None


def install(adapter, trainer):
    """Wraps the TensorFlow trainer's shims; returns why it cannot, or None."""
    global _unscale
    _unscale = None
    owner, why = _adapters.keras2_step_shims(trainer)
    if why is not None:
        return why
    if adapter.scales_losses:
        from keras.src.losses import loss

        _unscale = loss.unscale_loss_for_distribution
    _wrapping.wrap_method(owner, "compiled_loss", _compiled_loss)
    _wrapping.wrap_method(
        owner, "_compiled_metrics_update_state", _compiled_metrics_update_state
    )
    return None

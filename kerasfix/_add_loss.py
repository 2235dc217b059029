"""Keras 2's logged `loss` where `add_loss` values are the whole loss.

Keras 3 sums each `add_loss` value into the total (`ops.sum`) and logs the
total weighted by the batch size. Keras 2 differentiated that same sum, but
with no compiled loss its loss tracker took the `add_loss` values added up
elementwise (`tf.add_n`) with no batch size: it averaged their elements,
over the epoch. A per-sample CTC loss of shape (batch, 1) (keras-io's
captcha OCR) was logged as the mean per sample, a scalar as the plain
average of the batches. Next to a compiled loss, Keras 2 logged the sum of
scalar values as Keras 3 does, and raised on non-scalar ones (`tf.add_n`
of a scalar and a tensor), so Keras 3's value stays there.

`compute_loss` notes Keras 2's value and weight for the total it returns,
and the step's update of the `loss` tracker with that very total takes them
instead. The total Keras differentiates is never touched.

TensorFlow and torch only: JAX's step takes the loss it logs out of the
gradient trace as another value, which cannot be told from the total
`compute_loss` returned, so on JAX Keras logs its own value.
"""

import functools
import threading

from kerasfix import _adapters, _config, _wrapping

NOT_ON_JAX = (
    "JAX's step logs the loss it takes out of the gradient trace, not a "
    "total kerasfix can tell apart, so Keras logs its own value"
)

# Per thread: `compiled`, the compiled loss values of the compute_loss under
# way; `pending`, (model, total, value, weight) for the loss tracker.
_local = threading.local()


def _note_compiled(original):
    # `CompileLoss.__call__`, in every eager step: one frame.
    def call(self, *args, **kwargs):
        value = original(self, *args, **kwargs)
        compiled = getattr(_local, "compiled", None)
        if compiled is not None:
            compiled.append(value)
        return value

    return call


def _compute_loss(original):
    # Trainer's `compute_loss`, in every eager step: one frame.
    def compute_loss(self, *args, **kwargs):
        if _config.mode is None:
            return original(self, *args, **kwargs)
        outer = getattr(_local, "compiled", None)
        _local.compiled = compiled = []
        _local.pending = None
        try:
            total = original(self, *args, **kwargs)
        finally:
            _local.compiled = outer
        for value in compiled:
            if value is not None:
                return total  # a compiled loss: Keras's value is Keras 2's
        added = self.losses
        if added:
            _local.pending = (self, total) + _keras2_logged(added)
        return total

    return compute_loss


def _keras2_logged(added):
    """`(value, weight)` Keras 2's loss tracker took for one batch: the
    mean of the elements of the values added up, each element counted once."""
    from keras.src import ops

    summed = functools.reduce(ops.add, [ops.cast(v, "float32") for v in added])
    return ops.mean(summed), ops.sum(ops.ones_like(summed))


def _update_state(original):
    # `Mean.update_state`, for every mean metric in every eager step: one
    # frame.
    def update_state(self, *args, **kwargs):
        pending = getattr(_local, "pending", None)
        if pending is None or _config.mode is None:
            return original(self, *args, **kwargs)
        model, total, value, weight = pending
        values = args[0] if args else kwargs.get("values")
        # Only the step's own update with the total compute_loss returned: a
        # custom step that logs something else, or tf.distribute's rescaled
        # total, keeps Keras's arithmetic.
        if self is not _adapters.loss_tracker(model) or not _adapters.is_same_total(values, total):
            return original(self, *args, **kwargs)
        _local.pending = None
        return original(self, value, sample_weight=weight)

    return update_state


def install(compile_utils, trainer, reduction_metrics):
    """Wraps what Keras 2's `add_loss` logging needs; returns why it cannot
    work here, or None."""
    why = _adapters.missing_for_add_loss(compile_utils, trainer, reduction_metrics)
    if why is not None:
        return why
    _wrapping.replace_method(compile_utils.CompileLoss, "__call__", _note_compiled)
    _wrapping.replace_method(trainer, "compute_loss", _compute_loss)
    _wrapping.replace_method(reduction_metrics.Mean, "update_state", _update_state)
    return None


def uninstall():
    _local.pending = None
    _local.compiled = None

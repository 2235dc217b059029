"""Keras 2's logged `loss` where `add_loss` values make up (part of) the loss.

Keras 3 sums each `add_loss` value into the total (`ops.sum`) and logs the
total weighted by the batch size. Keras 2 differentiated that same sum, but
its loss tracker added the values elementwise (`tf.add_n`) to the compiled
loss and took the mean of the elements, weighted by the batch size only
where a compiled loss gave one: a per-sample CTC loss of shape (batch, 1)
was logged as its mean, a scalar `add_loss` alone as the plain average of
the batches. Where that differs (a non-scalar value, or no compiled loss),
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

# Per thread: `compiled`, the compiled loss values of the compute_loss under
# way; `pending`, (model, total, value, weight, per_batch) for the tracker.
_local = threading.local()


def _note_compiled(wrapped, instance, args, kwargs):
    value = wrapped(*args, **kwargs)
    compiled = getattr(_local, "compiled", None)
    if compiled is not None:
        compiled.append(value)
    return value


def _compute_loss(wrapped, instance, args, kwargs):
    if _config.mode is None:
        return wrapped(*args, **kwargs)
    outer = getattr(_local, "compiled", None)
    _local.compiled = compiled = []
    _local.pending = None
    try:
        total = wrapped(*args, **kwargs)
    finally:
        _local.compiled = outer
    added = instance.losses
    if added and len(compiled) <= 1:
        logged = _keras2_logged(compiled[0] if compiled else None, added)
        if logged is not None:
            _local.pending = (instance, total) + logged
    return total


def _keras2_logged(compiled, added):
    """`(value, weight, per_batch)` Keras 2's tracker took for one batch,
    or None where it is Keras 3's (scalar `add_loss` next to a compiled loss)."""
    from keras.src import ops

    if compiled is not None and all(len(v.shape) == 0 for v in added):
        return None
    summed = functools.reduce(ops.add, [ops.cast(v, "float32") for v in added])
    # Keras 2's Mean counted each element, each weighted by the batch size
    # where a compiled loss gave one.
    count = ops.sum(ops.ones_like(summed))
    value = ops.mean(summed)
    if compiled is not None:
        value = ops.add(value, ops.cast(compiled, "float32"))
    return value, count, compiled is not None


def _update_state(wrapped, instance, args, kwargs):
    pending = getattr(_local, "pending", None)
    if pending is None or _config.mode is None:
        return wrapped(*args, **kwargs)
    model, total, value, weight, per_batch = pending

    def bind(values, sample_weight=None):
        return values, sample_weight

    values, batch_size = bind(*args, **kwargs)
    # Only the step's own update with the total compute_loss returned: a
    # custom step that logs something else, or tf.distribute's rescaled
    # total, keeps Keras's arithmetic.
    if values is not total or instance is not _adapters.loss_tracker(model):
        return wrapped(*args, **kwargs)
    _local.pending = None
    from keras.src import ops

    if per_batch and batch_size is not None:
        weight = ops.multiply(weight, ops.cast(batch_size, "float32"))
    return wrapped(value, sample_weight=weight)


def install(compile_utils, trainer, reduction_metrics, backend):
    """Wraps what Keras 2's `add_loss` logging needs; returns why it cannot
    work here, or None."""
    why = _adapters.missing_for_add_loss(compile_utils, trainer, reduction_metrics)
    if why is not None or backend == "jax":
        return why
    _wrapping.wrap_method(compile_utils.CompileLoss, "__call__", _note_compiled)
    _wrapping.wrap_method(trainer, "compute_loss", _compute_loss)
    _wrapping.wrap_method(reduction_metrics.Mean, "update_state", _update_state)
    return None


def uninstall():
    _local.pending = None
    _local.compiled = None

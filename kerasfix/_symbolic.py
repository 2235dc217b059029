"""A data batch as symbolic tensors, for calling a model before its first step.

JAX traces a step with the metric variables that exist before it, so the
metrics kerasfix adds (per-output losses on 3.0-3.4, `add_metric`) are made
by calling the model symbolically on the first batch, as Keras's own
`_symbolic_build` does.
"""

from kerasfix import _adapters


def first_batch(iterator):
    """The first batch of an epoch of `iterator`, or None if it has none."""
    for item in iterator.enumerate_epoch():
        data = item[-1]  # (step, data) up to 3.6, (begin, end, data) after
        return data[0] if isinstance(data, (list, tuple)) else next(data)
    return None


def spec(batch):
    """`batch` with every array replaced by a KerasTensor of its shape."""
    from keras.src import backend
    from keras.src.backend.common.variables import standardize_dtype

    def one(value):
        if value is None:
            return None
        return backend.KerasTensor(value.shape, standardize_dtype(value.dtype))

    return _adapters.tree().map_structure(one, batch)

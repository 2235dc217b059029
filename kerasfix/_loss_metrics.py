"""Keras 2's per-output loss metrics inside Keras 3's CompileLoss.

Upstream `CompileLoss.call` still computes the total, so the loss that is
trained on is upstream's own arithmetic. Each resolved loss function is
proxied by a `_Recorder` that notes its raw value as `call` runs; after
`call`, kerasfix updates one `Mean` per output with those values, weighted by
the dynamic batch size, under the names Keras 2 gave them. While `call`
runs, `CompileLoss.metrics` is a list of `None` as long as the losses, so
upstream records nothing and (on 3.5-3.6) drops no loss from the total.
"""

import sys
import threading
import warnings
import weakref

import wrapt

from kerasfix import _adapters, _config, _names, _wrapping

_tracked = weakref.WeakKeyDictionary()  # CompileLoss -> _Tracked
_scaling = threading.local()  # calls of Keras's scale_loss_for_distribution
_adapter = None  # the layout found when the patch went in


class _Tracked:
    """kerasfix's state for one CompileLoss built while kerasfix was on.

    It keeps its own adapter, so a `disable()` from another thread never
    leaves a step that is already running without one.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        self.metrics = None  # one Mean (or None) per loss entry, once named
        self.records = None  # a list while upstream `call` runs


class _Recorder(wrapt.ObjectProxy):
    """A loss function that also notes its raw value for kerasfix."""

    def __init__(self, loss_fn, tracked, index):
        super().__init__(loss_fn)
        self._self_tracked = tracked
        self._self_index = index

    def __call__(self, y_true, y_pred, *args, **kwargs):
        before = getattr(_scaling, "calls", 0)
        value = self.__wrapped__(y_true, y_pred, *args, **kwargs)
        records = self._self_tracked.records
        if records is not None:
            scaled = getattr(_scaling, "calls", 0) != before
            records.append((self._self_index, value, y_pred, scaled))
        return value


def _count_scaling(wrapped, instance, args, kwargs):
    # Keras 3.8+ divides a reduced loss by the number of replicas inside
    # `Loss.__call__`, but not a loss whose `call` already returns a scalar;
    # counting the calls tells which values to multiply back for reporting.
    _scaling.calls = getattr(_scaling, "calls", 0) + 1
    return wrapped(*args, **kwargs)


def _swap_loss_fns(compile_loss, adapter, swap):
    entries = adapter.entries(compile_loss)
    for index, entry in enumerate(entries):
        fn = adapter.loss_fn(entry)
        if fn is not None:
            entries[index] = adapter.with_loss_fn(entry, swap(index, fn))


def _make_metrics(compile_loss, tracked, y_pred, records, mode):
    """One named Mean per loss that ran, on the model's first call.

    Names are Keras 2's, or Keras 3.5-3.6's in `weighted` mode. Outputs are
    told apart by identity: the tensor a loss received is one of the leaves
    of `y_pred` as the model returned it (the first one not taken yet, as
    one tensor may be returned as several outputs). A loss over several
    outputs at once (structured losses, which Keras 2 did not have) keeps
    the name Keras 3 gives it.
    """
    from keras.src import metrics

    naming = _names.keras36_names if mode == "weighted" else _names.keras2_names
    leaves, names = naming(compile_loss, y_pred)
    entries = tracked.adapter.entries(compile_loss)
    tracked.metrics = [None] * len(entries)
    if len(leaves) < 2:
        return
    taken, used_names = set(), []
    for index, _, y_p, _ in records:
        mine = [leaf for leaf, _ in _names.flatten_with_names(y_p)]
        same = [i for i, leaf in enumerate(leaves) if any(leaf is m for m in mine)]
        if len(mine) > 1:
            keras_name = tracked.adapter.keras_name(entries[index])
            name = keras_name or "_".join(
                names[i] or f"output_{i + 1}" for i in same
            )
        elif same:
            pick = next((i for i in same if i not in taken), same[0])
            taken.add(pick)
            # Keras 3.6 names an output it has no name for after its loss.
            loss_name = getattr(tracked.adapter.loss_fn(entries[index]), "name", None)
            name = names[pick] or loss_name or f"output_{pick + 1}"
        else:
            name = f"output_{index + 1}"
        name = _names.unique(name, used_names)
        used_names.append(name)
        tracked.metrics[index] = metrics.Mean(name=f"{name}_loss")
    _warn_renamed(compile_loss, tracked, entries)
    if tracked.adapter is _adapters.FLAT_LISTS_METRICS:
        _warn_restored(entries, tracked)


def _warn_renamed(compile_loss, tracked, entries):
    # A monitor or dashboard on the running release's name would otherwise
    # find nothing, silently; once per compiled model.
    renamed = []
    for index, metric in enumerate(tracked.metrics):
        theirs = tracked.adapter.metric_name(compile_loss, index)
        if metric is not None and theirs is not None:
            if f"{theirs}_loss" != metric.name:
                renamed.append(f"{theirs}_loss -> {metric.name}")
    if renamed:
        version = getattr(sys.modules.get(_adapters.VERSION), "__version__", "3")
        warnings.warn(
            f"kerasfix ({_config.mode} mode) names this model's per-output "
            f"loss metrics differently from Keras {version}: "
            f"{', '.join(renamed)} (and val_ likewise). Monitor the new "
            "names; see kerasfix's README, 'Names'.",
            _config.KerasfixWarning,
            stacklevel=2,
        )


def _warn_restored(entries, tracked):
    # Keras 3.5-3.6 zips the losses against metrics made only for non-None
    # losses, so every loss past that count is left out of the total.
    kept = max(1, sum(1 for fn in entries if fn)) if len(entries) > 1 else 1
    restored = [
        tracked.metrics[i].name[: -len("_loss")]
        for i in range(kept, len(entries))
        if entries[i] and tracked.metrics[i] is not None
    ]
    if restored:
        _config.warn_once(
            "kerasfix restored the loss of output(s) "
            f"{', '.join(restored)} to the total loss: this Keras release "
            "leaves it out when an earlier output has loss None."
        )


def _update_metrics(compile_loss, tracked, records, mode):
    from keras.src import ops
    from keras.src.losses import loss as loss_module

    if not records:
        return
    # Keras 2 weighed every output by the first one's dynamic batch size;
    # `ops.shape` gives a tensor inside tf.function where the size varies.
    first, _ = next(_names.flatten_with_names(records[0][2]))
    batch_size = ops.shape(first)[0]
    for index, value, _, scaled in records:
        metric = tracked.metrics[index]
        if metric is None:
            continue
        value = ops.cast(value, "float32")  # as Keras 2, under any policy
        if scaled:
            value = loss_module.unscale_loss_for_distribution(value)
        weight = tracked.adapter.weight(compile_loss, index)
        if mode == "weighted" and weight is not None:
            value = ops.multiply(value, weight)
        metric.update_state(value, sample_weight=batch_size)


def _built_before_enable(compile_loss):
    """True (and says so once) for a loss built while kerasfix was off."""
    if compile_loss in _tracked or not compile_loss.built:
        return False
    _config.warn_once(
        "kerasfix was enabled after this model's loss was built; the model "
        "keeps Keras's own per-output loss metrics until it is compiled again."
    )
    return True


def _call(wrapped, instance, args, kwargs):
    mode = _config.mode
    if mode is None or _built_before_enable(instance):
        return wrapped(*args, **kwargs)
    tracked = _tracked.setdefault(instance, _Tracked(_adapter))
    y_pred = args[1] if len(args) > 1 else kwargs["y_pred"]
    tracked.records = []
    try:
        total = wrapped(*args, **kwargs)
    finally:
        records, tracked.records = tracked.records, None
    if tracked.metrics is None:
        _make_metrics(instance, tracked, y_pred, records, mode)
    _update_metrics(instance, tracked, records, mode)
    return total


def _build(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    if _config.mode is not None:
        tracked = _tracked.setdefault(instance, _Tracked(_adapter))
        _swap_loss_fns(
            instance,
            tracked.adapter,
            lambda i, fn: fn if isinstance(fn, _Recorder) else _Recorder(fn, tracked, i),
        )
    return result


def _metrics_of(compile_loss):
    """kerasfix's metrics of one CompileLoss (3.0-3.4: its `metrics`)."""
    _built_before_enable(compile_loss)
    tracked = _tracked.get(compile_loss)
    if tracked is None or tracked.metrics is None:
        return []
    return [m for m in tracked.metrics if m is not None]


def metric_names(model):
    """The names of the per-output loss metrics kerasfix made for `model`
    (without `val_`); empty where it made none."""
    compile_loss = getattr(model, "_compile_loss", None)
    tracked = _tracked.get(compile_loss) if compile_loss is not None else None
    if tracked is None or tracked.metrics is None:
        return []
    return [m.name for m in tracked.metrics if m is not None]


def _compile_loss_metrics(fget, instance):
    tracked = _tracked.get(instance)
    if tracked is None:
        _built_before_enable(instance)
        return fget(instance)
    if tracked.records is not None:
        return [None] * len(tracked.adapter.entries(instance))
    return _metrics_of(instance)


def _trainer_metrics(fget, instance):
    metrics = fget(instance)
    compile_loss = getattr(instance, "_compile_loss", None)
    ours = _metrics_of(compile_loss) if compile_loss is not None else []
    # After the `loss` tracker, where Keras 3.5+ lists CompileLoss metrics.
    return metrics[:1] + ours + metrics[1:] if ours else metrics


def _symbolic_build(wrapped, instance, args, kwargs):
    # Keras 3.0-3.4 builds CompileLoss inside the first traced step, too late
    # for JAX to carry new metric variables; build it symbolically first.
    result = wrapped(*args, **kwargs)
    compile_loss = getattr(instance, "_compile_loss", None)
    if _config.mode is None or compile_loss is None or compile_loss.built:
        return result
    from keras.src import backend
    from keras.src.trainers.data_adapters import data_adapter_utils

    def bind(iterator=None, data_batch=None):
        return iterator, data_batch

    def symbolic(value):  # keras.src.tree only exists from 3.3
        if isinstance(value, dict):
            return {k: symbolic(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(symbolic(v) for v in value)
        if value is None:
            return None
        return backend.KerasTensor(value.shape, backend.standardize_dtype(value.dtype))

    iterator, data_batch = bind(*args, **kwargs)
    if data_batch is None:
        for _, data in iterator.enumerate_epoch():
            data_batch = data[0]
            break
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(
        symbolic(data_batch)
    )
    y_pred = backend.compute_output_spec(instance, x)
    backend.compute_output_spec(compile_loss, y, y_pred, sample_weight)
    return result


def install(adapter, compile_utils, trainer, loss):
    """Wraps what this release needs for kerasfix's loss metrics."""
    global _adapter
    _adapter = adapter
    cls = compile_utils.CompileLoss
    _wrapping.wrap_method(cls, "__call__", _call)
    _wrapping.wrap_method(cls, "build", _build)
    if adapter.lists_loss_metrics:
        _wrapping.wrap_property(cls, "metrics", _compile_loss_metrics)
    else:
        _wrapping.add_property(
            cls, "metrics", _metrics_of, "Per-output loss metrics (kerasfix)."
        )
        _wrapping.wrap_property(trainer, "metrics", _trainer_metrics)
        _wrapping.wrap_method(trainer, "_symbolic_build", _symbolic_build)
    if adapter.scales_losses:
        _wrapping.wrap_method(loss, "scale_loss_for_distribution", _count_scaling)


def uninstall():
    """Gives every CompileLoss kerasfix built its own loss functions back."""
    global _adapter
    _adapter = None
    for compile_loss, tracked in list(_tracked.items()):
        _swap_loss_fns(
            compile_loss,
            tracked.adapter,
            lambda i, fn: fn.__wrapped__ if isinstance(fn, _Recorder) else fn,
        )
    _tracked.clear()

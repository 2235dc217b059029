"""Keras 2's per-output loss metrics inside Keras 3's CompileLoss.

Upstream `CompileLoss.call` still computes the total, so the loss that is
trained on is upstream's own arithmetic. Each resolved loss function is
proxied by a `_Recorder` that notes its raw value as `call` runs; after
`call`, kerasfix updates one `Mean` per output with those values, weighted by
the dynamic batch size, under the names Keras 2 gave them. While `call`
runs, `CompileLoss.metrics` is, for that thread, a list of `None` as long as
the losses, so upstream records nothing and (on 3.5-3.6) drops no loss from
the total.

What one call records belongs to that call: several threads may compute the
loss of one model at once (eager torch, `run_eagerly=True`, two traces), and
a loss may even be called inside its own call.
"""

import contextlib
import sys
import threading
import warnings
import weakref

import wrapt

from kerasfix import _adapters, _config, _ids, _names, _symbolic, _wrapping

_tracked = _ids.ById()  # CompileLoss -> _Tracked
# Per thread: `calls`, {_Tracked: records of its call under way}, and
# `scaling`, how often Keras's scale_loss_for_distribution ran.
_local = threading.local()
_adapter = None  # the layout found when the patch went in
# Set by `install`, where keras is loaded: what every eager step uses,
# looked up once, not imported or asked for again in each step.
_ops = None
_loss_module = None
_on_tensorflow = False
_float32 = set()  # dtypes (of any backend) a loss value needs no cast from


class _Tracked:
    """kerasfix's state for one CompileLoss built while kerasfix was on.

    It keeps its own adapter, so a `disable()` from another thread never
    leaves a step that is already running without one.
    """

    def __init__(self, adapter, compile_loss):
        self.adapter = adapter
        self.compile_loss = weakref.ref(compile_loss)  # to give its losses back
        self.metrics = None  # one Mean (or None) per loss entry, once named
        self.listed = ()  # the Means of `metrics`, set before it: read each call
        # Two calls at once update the metrics in turn: a Mean's update
        # reads its variables, then assigns them.
        self.updating = threading.Lock()


def _calls():
    """This thread's calls under way: {_Tracked: the records of that call}."""
    calls = getattr(_local, "calls", None)
    if calls is None:
        calls = _local.calls = {}
    return calls


class _Recorder(wrapt.ObjectProxy):
    """A loss function that also notes its raw value for kerasfix."""

    def __init__(self, loss_fn, tracked, index):
        super().__init__(loss_fn)
        self._self_tracked = tracked
        self._self_index = index

    def __call__(self, y_true, y_pred, *args, **kwargs):
        before = getattr(_local, "scaling", 0)
        value = self.__wrapped__(y_true, y_pred, *args, **kwargs)
        records = getattr(_local, "calls", {}).get(self._self_tracked)
        if records is not None:
            scaled = getattr(_local, "scaling", 0) != before
            records.append((self._self_index, value, y_pred, scaled))
        return value


def _count_scaling(original):
    # Keras 3.8+ divides a reduced loss by the number of replicas inside
    # `Loss.__call__`, but not a loss whose `call` already returns a scalar;
    # counting the calls tells which values to multiply back for reporting.
    # Runs for every loss in every eager step: one frame.
    def scale_loss_for_distribution(*args, **kwargs):
        _local.scaling = getattr(_local, "scaling", 0) + 1
        return original(*args, **kwargs)

    return scale_loss_for_distribution


def _swap_loss_fns(compile_loss, adapter, swap):
    entries = adapter.entries(compile_loss)
    for index, entry in enumerate(entries):
        fn = adapter.loss_fn(entry)
        if fn is not None:
            entries[index] = adapter.with_loss_fn(entry, swap(index, fn))


def _make_metrics(compile_loss, adapter, y_pred, records, mode):
    """One named Mean (or None) per loss entry, on the first call.

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
    entries = adapter.entries(compile_loss)
    made = [None] * len(entries)
    if len(leaves) < 2:
        return made
    taken, used_names = set(), []
    for index, _, y_p, _ in records:
        mine = _adapters.tree().flatten(y_p)
        same = [i for i, leaf in enumerate(leaves) if any(leaf is m for m in mine)]
        if len(mine) > 1:
            keras_name = adapter.keras_name(entries[index])
            name = keras_name or "_".join(
                names[i] or f"output_{i + 1}" for i in same
            )
        elif same:
            pick = next((i for i in same if i not in taken), same[0])
            taken.add(pick)
            # Keras 3.6 names an output it has no name for after its loss.
            loss_name = getattr(adapter.loss_fn(entries[index]), "name", None)
            name = names[pick] or loss_name or f"output_{pick + 1}"
        else:
            name = f"output_{index + 1}"
            _config.warn_once(
                f"kerasfix could not tell which output loss {index + 1} of "
                f"{len(entries)} was computed on (it did not receive one of "
                f"the model's outputs); its metric is named {name}_loss."
            )
        name = _names.unique(name, used_names)
        used_names.append(name)
        with _adapters.outside_step():
            made[index] = metrics.Mean(name=f"{name}_loss")
    _warn_renamed(compile_loss, adapter, made)
    if adapter is _adapters.FLAT_LISTS_METRICS:
        _warn_restored(entries, made)
    return made


def _warn_renamed(compile_loss, adapter, made):
    # A monitor or dashboard on the running release's name would otherwise
    # find nothing, silently; once per compiled model.
    renamed = []
    for index, metric in enumerate(made):
        theirs = adapter.metric_name(compile_loss, index)
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


def _warn_restored(entries, made):
    # Keras 3.5-3.6 zips the losses against metrics made only for non-None
    # losses, so every loss past that count is left out of the total.
    kept = max(1, sum(1 for fn in entries if fn)) if len(entries) > 1 else 1
    restored = [
        made[i].name[: -len("_loss")]
        for i in range(kept, len(entries))
        if entries[i] and made[i] is not None
    ]
    if restored:
        _config.warn_once(
            "kerasfix restored the loss of output(s) "
            f"{', '.join(restored)} to the total loss: this Keras release "
            "leaves it out when an earlier output has loss None."
        )


def _batch_size(records):
    """The first output's dynamic batch size, as Keras 2 weighed every
    output by; None (each call counts once) where outputs are 0-d or empty.

    `ops.shape` gives a tensor inside tf.function, where the size varies;
    elsewhere the leaf's own shape is that size, as Keras reads it.
    """
    for _, _, y_p, _ in records:
        for leaf in _adapters.tree().flatten(y_p):
            if getattr(leaf, "ndim", None):
                return _ops.shape(leaf)[0] if _on_tensorflow else leaf.shape[0]
    return None


def _as_float32(value):
    """`value` as float32, as Keras 2 reported it under any policy. A loss
    is float32 already, as a rule: `ops.cast`, several calls on every eager
    step, runs only for a dtype not seen to be float32."""
    if getattr(value, "dtype", None) in _float32:
        return value
    value = _ops.cast(value, "float32")
    _float32.add(value.dtype)
    return value


def _update_metrics(compile_loss, tracked, records, mode):
    if not records:
        return
    batch_size = _batch_size(records)
    updates = []
    for index, value, _, scaled in records:
        metric = tracked.metrics[index]
        if metric is None:
            continue
        value = _as_float32(value)
        if scaled:
            value = _loss_module.unscale_loss_for_distribution(value)
        weight = tracked.adapter.weight(compile_loss, index)
        if mode == "weighted" and weight is not None:
            value = _ops.multiply(value, weight)
        updates.append((metric, value))
    with contextlib.nullcontext() if _in_tf_replicas() else tracked.updating:
        for metric, value in updates:
            metric.update_state(value, sample_weight=batch_size)


def _in_tf_replicas():
    # tf.distribute traces each replica in its own thread and makes them
    # meet inside a variable update (merge_call): a lock held across the
    # update would deadlock them (seen on Keras 3.7-3.8). Those threads only
    # build a graph, so they cannot lose an update. Other backends run no
    # step in them, even with TensorFlow loaded.
    return _on_tensorflow and sys.modules["tensorflow"].distribute.has_strategy()


def _built_before_enable(compile_loss):
    """True (and says so once) for a loss built while kerasfix was off."""
    if id(compile_loss) in _tracked or not compile_loss.built:
        return False
    _config.warn_once(
        "kerasfix was enabled after this model's loss was built; the model "
        "keeps Keras's own per-output loss metrics until it is compiled again."
    )
    return True


def _track(compile_loss):
    """The `_Tracked` of a CompileLoss, made on first use; under the lock."""
    tracked = _tracked.get(id(compile_loss))
    if tracked is None:
        tracked = _tracked.put(compile_loss, _Tracked(_adapter, compile_loss))
    return tracked


def _call(original):
    # `CompileLoss.__call__`, in every eager step: one frame. Without the
    # lock once tracked: a `_Tracked` keeps its own adapter.
    def call(self, *args, **kwargs):
        mode = _config.mode
        tracked = _tracked.get(id(self)) if mode is not None else None
        if tracked is None:
            with _config.lock:  # mode and adapter as one enable() left them
                mode = _config.mode
                if mode is None or _built_before_enable(self):
                    tracked = None
                else:
                    tracked = _track(self)
        if tracked is None:
            return original(self, *args, **kwargs)
        y_pred = args[1] if len(args) > 1 else kwargs["y_pred"]
        calls = _calls()
        outer = calls.get(tracked)  # a call inside its own call gets it back
        calls[tracked] = records = []
        try:
            total = original(self, *args, **kwargs)
        finally:
            if outer is None:
                del calls[tracked]
            else:
                calls[tracked] = outer
        if tracked.metrics is None:
            with _config.lock:  # one thread names the metrics; others see them whole
                if tracked.metrics is None:
                    made = _make_metrics(self, tracked.adapter, y_pred, records, mode)
                    tracked.listed = tuple(metric for metric in made if metric is not None)
                    tracked.metrics = made
        if tracked.listed:
            _update_metrics(self, tracked, records, mode)
        return total

    return call


def _build(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    with _config.lock:
        tracked = None if _config.mode is None else _track(instance)
    if tracked is not None:
        _swap_loss_fns(
            instance,
            tracked.adapter,
            lambda i, fn: fn if isinstance(fn, _Recorder) else _Recorder(fn, tracked, i),
        )
    return result


def _metrics_of(compile_loss):
    """kerasfix's metrics of one CompileLoss (3.0-3.4: its `metrics`).

    Read many times in every step: no lock, as reading `_tracked` and a
    `_Tracked`'s `listed`, set whole once, is atomic."""
    tracked = _tracked.get(id(compile_loss))
    if tracked is None:
        _built_before_enable(compile_loss)
        return []
    return list(tracked.listed)


def metric_names(model):
    """The names of the per-output loss metrics kerasfix made for `model`
    (without `val_`); empty where it made none."""
    compile_loss = getattr(model, "_compile_loss", None)
    tracked = _tracked.get(id(compile_loss)) if compile_loss is not None else None
    if tracked is None:
        return []
    return [m.name for m in tracked.listed]


def _compile_loss_metrics(fget):
    # Read three times a `train_on_batch`: one frame, no further call.
    def metrics(self):
        tracked = _tracked.get(id(self))
        if tracked is None:
            _built_before_enable(self)
            return fget(self)
        if tracked in getattr(_local, "calls", ()):  # upstream's own `call`, in this thread
            return [None] * len(tracked.adapter.entries(self))
        return list(tracked.listed)

    return metrics


def _trainer_metrics(fget, instance):
    metrics = fget(instance)
    compile_loss = getattr(instance, "_compile_loss", None)
    ours = _metrics_of(compile_loss) if compile_loss is not None else []
    # After the `loss` tracker, where Keras 3.5+ lists CompileLoss metrics.
    return metrics[:1] + ours + metrics[1:] if ours else metrics


def _reads_a_batch(trainer):
    """Whether Keras 3.0-3.4's own `_symbolic_build` reads a batch: when the
    model, its compiled metrics or its optimizer is not built yet."""
    compile_metrics = trainer._compile_metrics
    return (
        not all(layer.built for layer in trainer._flatten_layers())
        or (compile_metrics is not None and not compile_metrics.built)
        or (trainer.optimizer is not None and not trainer.optimizer.built)
    )


def _symbolic_build(wrapped, instance, args, kwargs):
    # Keras 3.0-3.4 builds CompileLoss inside the first traced step, too late
    # for JAX to carry new metric variables; build it symbolically first, on
    # the batch Keras reads itself (and hands it, so it is read once). Where
    # Keras reads none (a loaded model: all built but CompileLoss) only JAX
    # needs one; elsewhere the first step builds CompileLoss.
    compile_loss = getattr(instance, "_compile_loss", None)
    if _config.mode is None or compile_loss is None or compile_loss.built:
        return wrapped(*args, **kwargs)
    from keras.src import backend
    from keras.src.trainers.data_adapters import data_adapter_utils

    def bind(iterator=None, data_batch=None):
        return iterator, data_batch

    iterator, data_batch = bind(*args, **kwargs)
    needed = _reads_a_batch(instance) or backend.backend() == "jax"
    if data_batch is None and needed:
        data_batch = _symbolic.first_batch(iterator)
    result = wrapped(iterator=iterator, data_batch=data_batch)
    if data_batch is None:
        return result
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(
        _symbolic.spec(data_batch)
    )
    y_pred = backend.compute_output_spec(instance, x)
    backend.compute_output_spec(compile_loss, y, y_pred, sample_weight)
    return result


def install(adapter, compile_utils, trainer, loss):
    """Wraps what this release needs for kerasfix's loss metrics."""
    global _adapter, _ops, _loss_module, _on_tensorflow
    from keras.src import backend, ops

    _adapter = adapter
    _ops, _loss_module = ops, loss
    _on_tensorflow = backend.backend() == "tensorflow"
    cls = compile_utils.CompileLoss
    _wrapping.replace_method(cls, "__call__", _call)
    _wrapping.wrap_method(cls, "build", _build)
    if adapter.lists_loss_metrics:
        _wrapping.replace_property(cls, "metrics", _compile_loss_metrics)
    else:
        _wrapping.add_property(
            cls, "metrics", _metrics_of, "Per-output loss metrics (kerasfix)."
        )
        _wrapping.wrap_property(trainer, "metrics", _trainer_metrics)
        _wrapping.wrap_method(trainer, "_symbolic_build", _symbolic_build)
    if adapter.scales_losses:
        _wrapping.replace_method(loss, "scale_loss_for_distribution", _count_scaling)


def uninstall():
    """Gives every CompileLoss kerasfix built its own loss functions back."""
    global _adapter
    _adapter = None
    for tracked in list(_tracked.values()):
        compile_loss = tracked.compile_loss()
        if compile_loss is None:
            continue
        _swap_loss_fns(
            compile_loss,
            tracked.adapter,
            lambda i, fn: fn.__wrapped__ if isinstance(fn, _Recorder) else fn,
        )
    _tracked.clear()

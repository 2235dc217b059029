"""Keras 2's `Layer.add_metric(value, name)` inside `call()`, on Keras 3.

Keras 2 updated the metric where `add_metric` was called, whatever else the
step called (a teacher model, a loss that runs a feature extractor, the
model twice). TensorFlow and torch are stateful, and kerasfix does the same
there, while a `fit`, `evaluate`, `train_on_batch` or `test_on_batch` runs;
`predict` takes no values up. A direct call (the model or a layer called by
the user's own code, eagerly or in their `tf.function`) updates the layer's
metric of that name, made on first sight and listed in `layer.metrics`, as
Keras 2 did on every backend.

JAX's compiled step cannot update a variable where the value is made: there
`add_metric` notes its value while the model runs forward, and the model's
`compute_loss`, inside the scope that carries metric variables out of the
step (`stateless_compute_loss`), updates the metrics. A forward pass is the
step's `StatelessScope` that collects losses (no other scope does).

A JAX model whose class writes its own `train_step`, `test_step` or
`compute_loss` has no such scope kerasfix can count on: the values made
inside the user's `jax.value_and_grad` leave it only through what the
user's code returns, and the user's metric loop updates every listed metric
from `y` and `y_pred`. There each value is sent to the host as the step
runs (`jax.debug.callback`), whatever calls it, into a mean kept outside
`model.metrics`; the step's logs get it once the step's callbacks are done,
and `reset_metrics` clears it.

The metrics belong to the model being trained, listed after its own
metrics (as Keras 2 listed them), so they are reset each epoch and logged
as `name` and `val_name`. They are made before the first step is traced,
by calling the model symbolically on a batch (JAX traces a step with the
variables that exist before it); a name first met later (in a model the
step calls) is made at its first update, on TensorFlow and torch.
"""

import threading

from kerasfix import _adapters, _config, _ids, _symbolic, _wrapping

# .step: _Pass of JAX's forward pass running; .discovery; .running: the
# models whose fit/evaluate/train_on_batch/test_on_batch runs in this
# thread (None for predict), innermost last
_local = threading.local()
_added = _ids.ById()  # model -> {name: _Added}
_discovered = _ids.ById()  # models already called symbolically -> True
_running_anywhere = []  # every thread's .running, for tf.distribute's replica threads
_last_result = None  # (result, Metric) of the latest Metric call while running
_stateful = False  # TensorFlow and torch: metrics update where add_metric is called
_tie_counts = False  # on TensorFlow: see _ones_after
_listed = None  # Keras's own `Trainer.metrics` getter
_host = _ids.ById()  # model -> {name: _HostMean}, JAX steps of the user's
_direct = _ids.ById()  # the Means direct calls made in layers -> True
_jax_steps = None  # (JAX trainer, Trainer): what a model's own step is compared with
_later = {}  # what is wrapped once first needed: {"listing"/"hosting": patches}
_own_steps = _ids.ById()  # model class -> whether it runs its own JAX step


class _Pass:
    """The values one forward pass gave `add_metric`."""

    def __init__(self, token, entry):
        self.token = token  # the JAX step's scope, or the outermost CallContext
        self.entry = entry  # the model called (None on JAX)
        self.records = []  # (layer, name, value, metric)
        self.results = {}  # id(result) -> (result, metric, args, kwargs, dropped)


class _Added:
    """One name's `Mean` (or the user's `Metric`) and the layer that added it."""

    def __init__(self, metric, layer):
        self.metric = metric
        self.layer = layer


class _HostMean:
    """One name's running mean on the host, as Keras 2's `Mean` counted it:
    every element of every value once."""

    def __init__(self, layer):
        self.layer = layer
        self.lock = threading.Lock()  # JAX may run callbacks in its own threads
        self.total, self.count = 0.0, 0

    def update(self, value):
        import numpy as np

        value = np.asarray(value)
        with self.lock:
            self.total += float(value.sum(dtype="float64"))
            self.count += value.size

    def reset(self):
        with self.lock:
            self.total, self.count = 0.0, 0

    def result(self):
        import numpy as np

        with self.lock:
            return np.float32(self.total / self.count if self.count else 0.0)


def _runs_own_jax_step(model):
    """Whether `model` runs a JAX train or test step of the user's, or a
    `compute_loss` of theirs inside Keras's (see the module's docstring)."""
    if _jax_steps is None:
        return False
    cls = type(model)
    own = _own_steps.get(id(cls))
    if own is None:
        runner, trainer = _jax_steps
        own = _own_steps.put(cls, any(
            getattr(cls, name, None) is not getattr(runner, name) for name in _adapters.JAX_OWN_STEPS
        ) or getattr(cls, "compute_loss", None) is not getattr(trainer, "compute_loss"))
    return own


def _current_pass():
    """The `_Pass` of the symbolic discovery call or of JAX's forward pass
    running, or None outside one."""
    discovery = getattr(_local, "discovery", None)
    if discovery is not None:
        return discovery
    from keras.src import backend
    from keras.src.backend.common import global_state

    if backend.in_stateless_scope():
        scope = backend.get_stateless_scope()
        if not scope.collect_losses:
            return None  # a symbolic or predict pass
        token, entry = scope, None
    else:
        token = global_state.get_global_attribute("current_call_ctx")
        if token is None:
            return None
        entry = token.entry_layer
    step = getattr(_local, "step", None)
    if step is None or step.token is not token:
        step = _local.step = _Pass(token, entry)
    return step


def check_arguments(value, name, kwargs, metric):
    """Keras 2's checks of `add_metric`'s arguments, with its messages, in its order."""
    if len(kwargs) > 1 or (kwargs and "aggregation" not in kwargs):
        raise TypeError(
            f"Unknown keyword arguments: {kwargs.keys()}. Expected `aggregation`."
        )
    aggregation = kwargs.get("aggregation")
    if aggregation is not None and aggregation != "mean":
        raise ValueError(
            "We currently support only `mean` sample-wise metric "
            f"aggregation. You provided aggregation=`{aggregation}`"
        )
    if name is None and metric is None:
        raise ValueError(
            "Please provide a name for your metric like "
            "`self.add_metric(ops.sum(inputs), name='mean_activation')`"
        )


def _add_metric(wrapped, instance, args, kwargs):
    if _config.mode is None:
        return wrapped(*args, **kwargs)
    return _add(instance, *args, **kwargs)


def _symbolic_error():
    return ValueError(
        "`add_metric()` on a symbolic tensor, outside `call()`, is for a "
        "functional model (`model.add_metric(tensor, name=...)`, which "
        "kerasfix adds to the model's graph as Keras 2 did). On any other "
        "model or layer, compute the value inside a layer's `call()` and "
        "call `self.add_metric(value, name=...)` there (a layer that "
        "returns its input unchanged will do), or pass a metric to "
        "`compile(metrics=[...])`."
    )


def _add(layer, value, name=None, **kwargs):
    from keras.src import backend

    if _stateful and getattr(_local, "discovery", None) is None:
        return _add_now(layer, value, name, kwargs)
    hosting = getattr(_local, "hosting", None)
    if hosting is not None and getattr(_local, "discovery", None) is None:
        return _add_to_host(hosting, layer, value, name, kwargs)
    if getattr(_local, "discovery", None) is None and not backend.in_stateless_scope():
        # JAX runs every step of Keras's in a stateless scope.
        return _add_direct(layer, value, name, kwargs)
    step = _current_pass()
    if step is None:
        return  # predict or a symbolic call: Keras 2's value is not asked for
    result = step.results.get(id(value))
    metric = result[1] if result is not None and result[0] is value else None
    check_arguments(value, name, kwargs, metric)
    step.records.append((layer, metric.name if metric else name, value, metric))


def _add_to_host(model, layer, value, name, kwargs):
    import jax

    known = _last_result
    if known is not None and known[0] is value:
        raise ValueError(
            f"kerasfix cannot log the metric {known[1].name!r} passed to "
            "`add_metric()` in a JAX step of your model's own (its "
            "`train_step`, `test_step` or `compute_loss`): no scope carries "
            "that metric's variables there. Pass the value itself, "
            "`self.add_metric(value, name=...)`, which kerasfix averages as "
            "Keras 2's `Mean` did."
        )
    check_arguments(value, name, kwargs, None)
    means = _host.get(id(model))
    if means is None:
        means = _host.put(model, {})
    mean = means.get(name)
    if mean is None:
        others = [m for m in _listed(model) if m.name == name and id(m) not in _direct]
        if others:
            raise _clash(name, len(others) + 1)
        mean = means[name] = _HostMean(layer)
    elif mean.layer is not layer:
        raise _clash(name, 2)
    jax.debug.callback(mean.update, value)


def hosted_names(model):
    """The names `add_metric` logs for `model` from its own JAX step, which
    `model.metrics` does not list."""
    return tuple(_host.get(id(model), ())) if _host else ()


def _hosted(model, function):
    """`function`, a jitted JAX step of `model`'s own, with the host's
    means of its `add_metric` values in its logs."""

    def step(*args, **kwargs):
        global _last_result
        _local.hosting = model  # while JAX traces the step
        try:
            logs, state = function(*args, **kwargs)
        finally:
            _local.hosting, _last_result = None, None  # lets the traced step go
        return _with_host_means(model, logs), state

    step.kerasfix_hosts = True
    return step


def _make_function(attribute):
    def wrapper(wrapped, instance, args, kwargs):
        result = wrapped(*args, **kwargs)
        if _config.mode is not None and _runs_own_jax_step(instance):
            function = getattr(instance, attribute, None)
            if function is not None and not getattr(function, "kerasfix_hosts", False):
                setattr(instance, attribute, _hosted(instance, function))
        return result

    return wrapper


def _metrics_result(wrapped, instance, args, kwargs):
    # Keras 3.2 logs each epoch, and every release `evaluate`'s result,
    # from the model's metrics, not from the last step's logs. Inside a
    # hosted step JAX is tracing it: the step's wrapper adds the values.
    result = wrapped(*args, **kwargs)
    if getattr(_local, "hosting", None) is not None:
        return result
    return _with_host_means(instance, result)


def _with_host_means(model, logs):
    """`logs` and, last, the host's means of `model`, once every callback
    JAX has queued has run."""
    means = _host.get(id(model)) if _host else None
    if not means or _config.mode is None:
        return logs
    import jax

    jax.effects_barrier()
    return {**logs, **{name: mean.result() for name, mean in means.items()}}


def _reset_metrics(wrapped, instance, args, kwargs):
    wrapped(*args, **kwargs)
    for mean in _host.get(id(instance), {}).values() if _host else ():
        mean.reset()


def _add_now(layer, value, name, kwargs):
    from keras.src import backend

    model = _running_model()
    if model is None or backend.in_stateless_scope():  # predict, a direct or symbolic call
        if model is None and not getattr(_local, "running", None) and not backend.in_stateless_scope():
            _add_direct(layer, value, name, kwargs)
        return
    known = _last_result
    metric = known[1] if known is not None and known[0] is value else None
    check_arguments(value, name, kwargs, metric)
    mean = _metric_for(model, layer, metric.name if metric else name, value, metric)
    if metric is None:  # a Metric's own call has updated it already
        _update_mean(mean, value)


def _add_direct(layer, value, name, kwargs):
    from keras.src import backend

    if backend.is_keras_tensor(value):
        raise _symbolic_error()
    global _last_result
    known, _last_result = _last_result, None
    metric = known[1] if known is not None and known[0] is value else None
    check_arguments(value, name, kwargs, metric)
    name = metric.name if metric else name
    found = _layer_metric(layer, name)
    if found is None:
        if metric is None:
            found = _new_mean(name, value)
            _direct.put(found, True)
            _wrap_later("listing")
        else:
            found = metric
        _adapters.layer_metrics(layer).append(found)
    if metric is None:  # a Metric's own call has updated it already
        _update_mean(found, value)


def _layer_metric(layer, name):
    """The metric `name` of `layer`: Keras 2 kept one per layer and name,
    whichever model called the layer, and whether `fit` or the user did."""
    for metric in _adapters.layer_metrics(layer):
        if metric.name == name:
            return metric
    for added in list(_added.values()):
        known = added.get(name)
        if known is not None and known.layer is layer:
            _adapters.layer_metrics(layer).append(known.metric)
            return known.metric
    return None


def _note_result(wrapped, instance, args, kwargs):
    # `add_metric(self.mean(x))` passes a Metric's result: Keras 2 logged
    # that Metric itself. In JAX's forward pass the Metric's variables are
    # not in the scope (Keras cannot update them there): its update waits
    # for the scope that carries them, and the call returns a placeholder.
    if _config.mode is None:
        return wrapped(*args, **kwargs)
    from keras.src import backend, ops

    global _last_result
    discovering = getattr(_local, "discovery", None) is not None
    if not discovering and getattr(_local, "hosting", None) is not None:
        # A JAX step of the model's own: no scope carries the Metric's
        # variables; `add_metric` of this placeholder says so.
        result = ops.zeros((), dtype=instance.dtype)
        _last_result = (result, instance)
        return result
    if not discovering and (_stateful or not backend.in_stateless_scope()):
        result = wrapped(*args, **kwargs)
        _last_result = (result, instance)
        return result
    step = _current_pass()
    if step is None:
        return wrapped(*args, **kwargs)

    deferred = backend.in_stateless_scope() and step is not getattr(_local, "discovery", None)
    result = ops.zeros((), dtype=instance.dtype) if deferred else wrapped(*args, **kwargs)
    step.results[id(result)] = (result, instance, args, kwargs, deferred)
    return result


def _clear_losses(wrapped, instance, args, kwargs):
    # An outermost call begins (every sublayer call is one, inside the
    # step's scope, which then keeps the values instead).
    from keras.src import backend

    if not backend.in_stateless_scope():
        _local.step = None
    return wrapped(*args, **kwargs)


def _clash(name, count):
    return ValueError(
        "Please provide different names for the metrics you have added. "
        f'We found {count} metrics with the name: "{name}". '
        "Give each `add_metric()` call (and each metric of the model) its own name."
    )


def _metric_for(model, layer, name, value, metric):
    """The metric `name` stands for in `model`, made on first sight."""
    added = _added.get(id(model))
    if added is None:
        added = _added.put(model, {})
    known = added.get(name)
    if known is not None:
        if known.layer is not layer or (metric is not None and known.metric is not metric):
            raise _clash(name, 2)
        return known.metric
    if metric is None:
        metric = _layer_metric(layer, name)
        if metric is not None:
            _reset_before_step(metric)
    others = [m for m in _listed(model) if m.name == name and m is not metric]
    if others:
        raise _clash(name, len(others) + 1)
    if metric is None:
        from keras.src import backend

        if backend.in_stateless_scope():
            raise ValueError(
                f"kerasfix could not create the metric of `add_metric(name="
                f"{name!r})`: it was first called inside a compiled JAX step, "
                "where no variable can be made. kerasfix makes these metrics "
                "by calling the model symbolically on the first batch of "
                "`fit`/`evaluate`; make sure that call reaches `add_metric` "
                "(with `training=True` and `False`)."
            )
        metric = _new_mean(name, value)
    added[name] = _Added(metric, layer)
    _wrap_later("listing")
    return metric


def _reset_before_step(metric):
    """Clears what a layer's metric held before this run (direct calls):
    Keras 3.0-3.3 reset no layer's metric at an epoch's start, and on
    TensorFlow the run may first meet it in its step's first trace."""
    from keras.src import backend

    if _tie_counts or not backend.in_stateless_scope():
        with _adapters.outside_step():
            metric.reset_state()


def _new_mean(name, value):
    from keras.src import metrics
    from keras.src.backend.common.variables import standardize_dtype

    dtype = standardize_dtype(getattr(value, "dtype", None) or "float32")
    return metrics.Mean(name=name, dtype=dtype if "float" in dtype else None)


def _ones_after(value):
    """Weights of one for `value`'s elements that wait for `value` on
    TensorFlow, else None (Keras's own count). A count of fixed shape is a
    constant that TensorFlow may add before the step's data arrives, and so
    once more in the step that finds a generator exhausted."""
    if not _tie_counts:
        return None
    import tensorflow as tf

    with tf.control_dependencies([value]):
        return tf.ones_like(value)


def _update_mean(mean, value):
    from keras.src import ops

    # Keras 2's Mean counted every element of the value once; Keras 3's
    # counts rows, the same for a value of rank 0 or 1.
    if getattr(value, "ndim", None) not in (0, 1):
        value = ops.reshape(value, (-1,))
    mean.update_state(value, sample_weight=_ones_after(value))


def _update(model, step):
    for layer, name, value, metric in step.records:
        found = _metric_for(model, layer, name, value, metric)
        if metric is None:
            _update_mean(found, value)
    for _, metric, args, kwargs, deferred in step.results.values():
        if deferred:
            metric.update_state(*args, **kwargs)


def _running_model():
    """The model whose train or test step may be running in this thread."""
    running = getattr(_local, "running", None)
    if running:
        return running[-1]
    # tf.distribute runs each replica's step in a thread of its own, which
    # takes the one model running, if only one is.
    anywhere = _running_anywhere[:]
    if anywhere and all(model is anywhere[0] for model in anywhere):
        return anywhere[0]
    return None


def _run(predicts):
    """`make(original)` for a method that runs steps (`fit`, ...,
    `train_on_batch`): notes the model running them, in one frame."""

    def make(original):
        def method(self, *args, **kwargs):
            if _config.mode is None:
                return original(self, *args, **kwargs)
            model = None if predicts else self
            running = _local.__dict__.setdefault("running", [])
            running.append(model)
            _running_anywhere.append(model)
            try:
                return original(self, *args, **kwargs)
            finally:
                running.pop()
                _running_anywhere.remove(model)
                if not _running_anywhere:
                    global _last_result
                    _last_result = None  # lets a traced graph go

        return method

    return make


def _compute_loss(wrapped, instance, args, kwargs):
    loss = wrapped(*args, **kwargs)
    step = getattr(_local, "step", None)
    if _config.mode is None or step is None or not (step.records or step.results):
        return loss
    from keras.src import backend

    # The step's own forward pass: its values wait, outside the step's
    # scope, for the scope `stateless_compute_loss` opens.
    if step.entry is None and backend.in_stateless_scope():
        _local.step = None
        _update(instance, step)
    return loss


def _trainer_metrics(fget, instance):
    # After all others, in the order they were added, as Keras 2 listed
    # them; Keras 3.4+ lists a layer's own metrics (of a direct call)
    # itself, and 3.4-3.14 before the compiled metrics.
    metrics = fget(instance)
    if _direct and _runs_own_jax_step(instance):
        # The user's JAX step would update it from `y` and `y_pred`.
        return [m for m in metrics if id(m) not in _direct]
    added = _added.get(id(instance))
    if not added:
        return metrics
    last = [a.metric for a in added.values()]
    ids = {id(m) for m in last}
    return [m for m in metrics if id(m) not in ids] + last


def _symbolic_build(original):
    """Trainer's `_symbolic_build`, which every `train_on_batch` calls: a
    replacement whose work after a model's first call is one lookup."""

    def method(self, *args, **kwargs):
        if _config.mode is None or id(self) in _discovered:
            return original(self, *args, **kwargs)
        return _first_build(original, self, args, kwargs)

    return method


def _first_build(original, model, args, kwargs):
    # JAX traces a step with the metric variables that exist before it:
    # call the model symbolically once to meet its add_metric names.
    if _runs_own_jax_step(model):
        _wrap_later("hosting")
        return original(model, *args, **kwargs)
    _discovered.put(model, True)

    def bind(iterator=None, data_batch=None):
        return iterator, data_batch

    iterator, batch = bind(*args, **kwargs)
    if batch is None:
        batch = _symbolic.first_batch(iterator)
    # Handed down, so Keras (and kerasfix's loss metrics) read no other.
    result = original(model, iterator=iterator, data_batch=batch)
    if batch is not None:
        _discover(model, batch)
    return result


def rediscover(model):
    """Calls `model` symbolically again before its next step: its graph
    has changed."""
    _discovered.pop(id(model), None)


def _discover(model, batch):
    from keras.src import backend
    from keras.src.trainers.data_adapters import data_adapter_utils

    x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(_symbolic.spec(batch))
    step = _local.discovery = _Pass(None, model)
    try:
        if getattr(model, "_call_has_training_arg", False):
            for training in (True, False):
                backend.compute_output_spec(model, x, training=training)
        else:
            backend.compute_output_spec(model, x)
    finally:
        _local.discovery = None
    for layer, name, value, metric in step.records:
        _metric_for(model, layer, name, value, metric)


def install(trainer, backend, model_module):
    """Wraps what `add_metric` needs on this release; returns why it cannot
    here, or None."""
    import importlib

    layer_module = importlib.import_module(_adapters.LAYER)
    metric_module = importlib.import_module(_adapters.METRIC)
    why = _adapters.missing_for_add_metric(layer_module, trainer, backend)
    if why is not None:
        return why
    global _stateful, _tie_counts, _listed, _jax_steps
    runner = _adapters.backend_trainer(model_module, trainer)
    if runner is None:
        return f"no subclass of {trainer.__name__} defines {', '.join(_adapters.RUNS)}"
    _stateful = backend != "jax"
    if not _stateful:
        why = _adapters.missing_for_jax_steps(runner, trainer)
        if why is not None:
            return why
    _tie_counts = backend == "tensorflow"
    _listed = trainer.metrics.fget  # Keras's own list, before ours is added
    # Every `train_on_batch` reads `model.metrics` three times and resets
    # them once: the wrappers only some models need (a metric of
    # add_metric's, a JAX step of the model's own) go in when first needed.
    later = {"listing": [(_wrapping.wrap_property, trainer, "metrics", _trainer_metrics)]}
    if not _stateful:
        later["hosting"] = [
            (_wrapping.wrap_method, trainer, "reset_metrics", _reset_metrics),
            (_wrapping.wrap_method, trainer, "get_metrics_result", _metrics_result),
        ] + [
            (_wrapping.wrap_method, runner, f"make_{kind}_function", _make_function(f"{kind}_function"))
            for kind in ("train", "test")
        ]
        for _, owner, name, _ in later["hosting"]:
            _wrapping.function_of(owner, name)  # fails here, not in a user's step
    _wrapping.wrap_method(layer_module.Layer, "add_metric", _add_metric)
    _wrapping.wrap_method(metric_module.Metric, "__call__", _note_result)
    _wrapping.replace_method(trainer, "_symbolic_build", _symbolic_build)
    if _stateful:
        for name in _adapters.RUNS:
            _wrapping.replace_method(runner, name, _run(predicts=name.startswith("predict")))
    else:
        _wrapping.wrap_method(layer_module.Layer, "_clear_losses", _clear_losses)
        _wrapping.wrap_method(trainer, "compute_loss", _compute_loss)
        _jax_steps = (runner, trainer)
    _later.update(later)
    return None


def _wrap_later(need):
    """Wraps, once, what `need` ("listing" or "hosting") waits for."""
    if need in _later:
        with _config.lock:
            for wrap, owner, name, wrapper in _later.pop(need, ()):
                wrap(owner, name, wrapper)


def uninstall():
    # A run under way in another thread takes its own model off the stacks.
    global _last_result, _jax_steps
    _local.step, _local.hosting, _last_result, _jax_steps = None, None, None, None
    _own_steps.clear()
    _later.clear()

"""Keras 2's compile and fit forms for models with several outputs.

tf-keras's `compile_utils` gave one loss, one flat list of metrics, a
scalar or dict of loss weights and a partial dict of losses or sample
weights a meaning for every output; Keras 3 rejects most of these forms and
reads a flat metrics list as long as the outputs as one metric per output.
kerasfix rewrites them, once per compiled model, into the per-output form
Keras 3 accepts with Keras 2's meaning, when `CompileLoss` and
`CompileMetrics` are built: only then are the outputs known, for subclassed
models too. Forms Keras 3 already reads as Keras 2 did are left alone, so
the total loss stays Keras's own arithmetic. Single-output models are
untouched.

Recompiling without `metrics=` and `weighted_metrics=` drops the earlier
compile's metrics, as tf-keras's new `MetricsContainer` did.
"""

import sys
import warnings

from kerasfix import _adapters, _config, _wrapping

_OF_MODEL = "_kerasfix_of_model"  # set on what `Model.compile` made


def _is_nested(value):
    return isinstance(value, (list, tuple, dict))


def _outputs(y_pred):
    """The outputs' keys (dict keys or positions) where `y_pred` is a flat
    list, tuple or dict of two or more outputs; else None."""
    if isinstance(y_pred, dict):
        keys = list(y_pred)
    elif isinstance(y_pred, (list, tuple)):
        keys = list(range(len(y_pred)))
    else:
        return None
    if len(keys) < 2 or any(_is_nested(y_pred[k]) for k in keys):
        return None
    return keys


def _names(owner, y_pred):
    """The outputs' names as Keras 2 knew them: a functional model's output
    names, else `output_1`, `output_2` ... (a subclassed model's list)."""
    names = getattr(owner, "output_names", None)
    if names and len(names) == len(y_pred):
        return [str(n) for n in names]
    return [f"output_{i + 1}" for i in range(len(y_pred))]


def _check_keys(struct, names, argument):
    unknown = [k for k in struct if k not in names]
    if unknown:
        raise ValueError(
            f"`{argument}` names {unknown}, which are not outputs of this "
            f"model; its outputs are {names}. Key `{argument}` by these names."
        )


def _per_output(struct, names, missing):
    """`struct` as a list with one entry per output, in output order."""
    if isinstance(struct, dict):
        return [struct.get(name, missing) for name in names]
    if isinstance(struct, (list, tuple)):
        return list(struct)
    return [struct] * len(names)


# Losses


def _losses(loss, weights, names, keyed):
    """`(loss, loss_weights)` with Keras 2's meaning for list outputs; keyed
    by output name where the CompileLoss knows the names, else lists."""
    for struct in (loss, weights):
        if isinstance(struct, dict) and not set(struct) <= set(names):
            # Keras's own error names the expected keys; leave it to Keras.
            return loss, weights
    partial = isinstance(loss, dict) and set(loss) != set(names)
    # Keras 3 pairs a dict of weights with a list of losses in key order,
    # 3.0-3.4 take no list of weights with a dict of losses, and none
    # broadcasts one loss to several weights or one weight to several losses.
    mismatched = weights is not None and (
        isinstance(weights, dict)
        or isinstance(loss, dict)
        or _is_nested(loss) != _is_nested(weights)
    )
    if not (partial or mismatched):
        return loss, weights
    loss = _per_output(loss, names, None)
    # An output without a weight counts once, as in Keras 2.
    weights = None if weights is None else _per_output(weights, names, 1.0)
    if keyed:
        # Keyed by output, as Keras 3.0-3.4 skip None only in a dict of losses.
        loss = dict(zip(names, loss))
        weights = None if weights is None else dict(zip(names, weights))
    return loss, weights


def _compiled_by_model(instance):
    """Whether a CompileLoss or CompileMetrics was made by `Model.compile`,
    whose arguments these forms are; one made directly is Keras's own."""
    return _config.mode is not None and getattr(instance, _OF_MODEL, False)


def _targets(y_true, y_pred, owner):
    """`(y_true, left_out)`: `y_true` shaped as several outputs, as Keras 2
    read it, and the keys of the outputs a target dict leaves out while they
    have a loss or metrics. One target goes to every output; a dict naming
    some outputs of a list becomes a list. A left-out output gets its own
    prediction as a stand-in target, which `_left_out_of_loss` and
    `_left_out_of_metrics` keep from counting, as Keras 2 skipped it."""
    # A list of targets, as Keras passes them in every step of a list of
    # outputs, is returned first: this runs in every step.
    if y_true is None or isinstance(y_true, (list, tuple)):
        return y_true, []
    keys = _outputs(y_pred)
    if keys is None:
        return y_true, []
    if not isinstance(y_true, dict):
        if isinstance(y_pred, dict):
            return {key: y_true for key in keys}, []
        return [y_true] * len(keys), []
    names = keys if isinstance(y_pred, dict) else _names(owner, y_pred)
    if not set(y_true) < set(names):
        return y_true, []  # every output, or names Keras's own error will list
    left_out = [
        keys[i]
        for i, name in enumerate(names)
        if name not in y_true and _reads_target(owner, names, i)
    ]
    from keras.src import ops

    targets = [
        y_true[name] if name in y_true else ops.stop_gradient(y_pred[key])
        for key, name in zip(keys, names)
    ]
    if isinstance(y_pred, dict):
        targets = dict(zip(keys, targets))
    return targets, left_out


def _per_sample(value, fill):
    """A per-sample weight of `fill` for each sample of `value`."""
    from keras.src import ops

    if len(value.shape) > 1:
        value = ops.sum(value, axis=tuple(range(1, len(value.shape))))
    return ops.full_like(value, fill)


def _each_output(struct, y_pred):
    """`struct`, one value for every output or one per output, as one per
    output in the structure of `y_pred`."""
    if _is_nested(struct):
        return struct
    keys = _outputs(y_pred)
    return {key: struct for key in keys} if isinstance(y_pred, dict) else [struct] * len(keys)


def _left_out_of_loss(y_true, y_pred, sample_weight, left_out):
    """The call's arguments with the left-out outputs weighted by zero:
    they add nothing to the total or its gradient and log 0, the value of
    the loss metric of an output Keras 2 never computed."""
    sample_weight = _each_output(sample_weight, y_pred)
    weights = []
    for key in _outputs(y_pred):
        if key in left_out:
            weights.append(_per_sample(y_pred[key], 0))
        elif sample_weight[key] is None:
            weights.append(_per_sample(y_pred[key], 1))
        else:
            weights.append(sample_weight[key])
    if isinstance(y_pred, dict):
        weights = dict(zip(y_pred, weights))
    return y_true, y_pred, weights


def _left_out_of_metrics(y_true, y_pred, sample_weight, left_out):
    """The call's arguments with the left-out outputs cut to no samples, so
    that their metrics count nothing, as Keras 2 skipped them."""
    def cut(struct):
        if isinstance(struct, dict):
            return {k: v[:0] if k in left_out and v is not None else v for k, v in struct.items()}
        if isinstance(struct, (list, tuple)):
            return [v[:0] if i in left_out and v is not None else v for i, v in enumerate(struct)]
        return struct

    if sample_weight is not None:
        sample_weight = _each_output(sample_weight, y_pred)
    return cut(y_true), cut(y_pred), cut(sample_weight)


def _reads_target(owner, names, i):
    """Whether output `i` has a loss (CompileLoss) or metrics (CompileMetrics)."""
    structs = [getattr(owner, "_user_loss", None)]
    structs += [getattr(owner, "_user_metrics", None), getattr(owner, "_user_weighted_metrics", None)]
    return any(_per_output(struct, names, None)[i] for struct in structs if struct is not None)


def _bind_build(y_true, y_pred):
    return y_true, y_pred


def _build_loss(wrapped, instance, args, kwargs):
    if _compiled_by_model(instance):
        y_true, y_pred = _bind_build(*args, **kwargs)
        if _outputs(y_pred) is not None and not isinstance(y_pred, dict):
            names = _names(instance, y_pred)
            instance._user_loss, instance._user_loss_weights = _losses(
                instance._user_loss,
                instance._user_loss_weights,
                names,
                keyed=names == list(instance.output_names or ()),
            )
        args, kwargs = (_copied(_targets(y_true, y_pred, instance)[0]), _copied(y_pred)), {}
    return wrapped(*args, **kwargs)


def _copied(struct):
    """A dict of targets or outputs copied: Keras 3.5's `build` pops the
    keys of outputs without a loss in place, and the `call` it runs in pops
    them again from the same dict. An OrderedDict stays one, so that Keras
    flattens it in insertion order, not sorted."""
    return struct.copy() if isinstance(struct, dict) else struct


# Sample weights


def _sample_weights(sample_weight, y_pred, owner):
    """A dict of per-output sample weights as a list in output order; an
    output it leaves out is weighted by ones, as Keras 2 left it unweighted."""
    if not isinstance(sample_weight, dict) or isinstance(y_pred, dict):
        return sample_weight
    if _outputs(y_pred) is None:
        return sample_weight
    names = _names(owner, y_pred)
    _check_keys(sample_weight, names, "sample_weight")
    if not sample_weight:
        return None
    from keras.src import ops

    ones = ops.ones_like(next(iter(sample_weight.values())))
    return [sample_weight.get(name, ones) for name in names]


def _bind_call(y_true, y_pred, sample_weight=None):
    return y_true, y_pred, sample_weight


def _conformed(leave_out):
    """`make(original)` for `CompileLoss.__call__` or
    `CompileMetrics.update_state`: a replacement that reads targets and
    sample weights as Keras 2 did; `leave_out` keeps the outputs a target
    dict leaves out from counting."""

    def make(original):
        # Runs in every eager (torch) step: one frame.
        def conformed(self, *args, **kwargs):
            if _config.mode is None or not getattr(self, _OF_MODEL, False):
                return original(self, *args, **kwargs)
            y_true, y_pred, sample_weight = _bind_call(*args, **kwargs)
            if not isinstance(y_pred, (list, tuple, dict)):
                return original(self, *args, **kwargs)  # one output: as Keras reads it
            if isinstance(y_true, (list, tuple)) and not isinstance(sample_weight, dict):
                # Keras's own form, as its steps pass a list of outputs'
                # targets: nothing to conform, and no further call.
                return original(self, *args, **kwargs)
            sample_weight = _sample_weights(sample_weight, y_pred, self)
            y_true, left_out = _targets(y_true, y_pred, self)
            if not left_out:
                return original(self, y_true, y_pred, sample_weight)
            try:
                return original(self, *leave_out(y_true, y_pred, sample_weight, left_out))
            except Exception as e:
                raise _stand_in_error(left_out, y_pred, self) from e

        return conformed

    return make


def _stand_in_error(left_out, y_pred, owner):
    names = left_out
    if not isinstance(y_pred, dict):
        names = [_names(owner, y_pred)[i] for i in left_out]
    return ValueError(
        f"The targets leave out the outputs {names}, which have a loss or "
        "metrics. Keras 2 left such an output out of the batch; kerasfix "
        "does so by giving it its own prediction as a target that counts for "
        "nothing. If the error above is about that target's shape, a loss or "
        "metric of these outputs takes targets of another shape (a sparse "
        "crossentropy, say): pass targets for these outputs, or compile them "
        "without a loss or metrics."
    )


def _fit_sample_weights(sample_weight, y, model):
    """A dict of per-output sample weights passed to `fit` and the like in
    the structure of `y`, as Keras's data adapters want it: a list in output
    order for a list of targets, every output's key for a dict of them."""
    if not isinstance(sample_weight, dict) or not sample_weight:
        return sample_weight
    if isinstance(y, dict):
        keys = list(y)
    elif isinstance(y, (list, tuple)) and len(y) > 1:
        keys = _names(model, y)
    else:
        return sample_weight
    _check_keys(sample_weight, keys, "sample_weight")
    import numpy as np

    ones = np.ones(np.shape(next(iter(sample_weight.values()))), dtype="float32")
    weights = [sample_weight.get(key, ones) for key in keys]
    return dict(zip(keys, weights)) if isinstance(y, dict) else weights


def _fit(original):
    """`fit`, `evaluate`, `train_on_batch` or `test_on_batch`, taking a dict
    of per-output sample weights: a replacement, as it runs on every
    `train_on_batch`."""

    def method(self, *args, **kwargs):
        if _config.mode is not None and ("sample_weight" in kwargs or "validation_data" in kwargs):
            kwargs = _with_sample_weights(self, args, kwargs)
        return original(self, *args, **kwargs)

    return method


def _with_sample_weights(model, args, kwargs):
    y = args[1] if len(args) > 1 else kwargs.get("y")
    kwargs = dict(kwargs)
    if "sample_weight" in kwargs:
        kwargs["sample_weight"] = _fit_sample_weights(kwargs["sample_weight"], y, model)
    validation = kwargs.get("validation_data")
    if isinstance(validation, (list, tuple)) and len(validation) == 3:
        val_x, val_y, val_weight = validation
        val_weight = _fit_sample_weights(val_weight, val_y, model)
        kwargs["validation_data"] = (val_x, val_y, val_weight)
    return kwargs


# Metrics


def _broadcasts(metrics):
    """Whether Keras 2 applied `metrics` to every output: one metric, or a
    list of metrics none of which is itself a list or dict."""
    if metrics is None:
        return False
    return not _is_nested(metrics) or (
        isinstance(metrics, (list, tuple)) and not any(_is_nested(m) for m in metrics)
    )


def _copy(metric, metric_class):
    # Each output needs its own state, as Keras 2 copied a Metric object.
    if isinstance(metric, metric_class):
        return type(metric).from_config(metric.get_config())
    return metric


def _metrics(metrics, keys, metric_class):
    flat = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    per_output = [[_copy(m, metric_class) for m in flat] for _ in keys]
    if isinstance(keys[0], str):
        return dict(zip(keys, per_output))
    return per_output


def _reading(metrics, names, each):
    """What one form of `metrics` logs, as a short list of names."""
    if each:
        pairs = [(n, m) for n in names for m in metrics]
    else:
        pairs = list(zip(names, metrics))
    return ", ".join(f"{n}_{_metric_name(m)}" for n, m in pairs)


def _metric_name(metric):
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__)


def _warn_reread(argument, metrics, names):
    # Keras 3 accepts this list with another meaning: say so, once per
    # compiled model, so a monitor on either reading's names is not lost.
    warnings.warn(
        f"kerasfix reads {argument}={list(map(_metric_name, metrics))} of this "
        f"model with {len(names)} outputs as Keras 2 did, each metric on each "
        f"output ({_reading(metrics, names, True)}); Keras 3 reads it as one "
        f"metric per output ({_reading(metrics, names, False)}). For that "
        f"meaning pass one list per output: "
        f"{argument}={[[_metric_name(m)] for m in metrics]}.",
        _config.KerasfixWarning,
        stacklevel=2,
    )


def _warn_renamed(keras_names, names):
    renamed = [f"{old} -> {new}" for old, new in zip(keras_names, names) if old != new]
    if renamed:
        version = getattr(sys.modules.get(_adapters.VERSION), "__version__", "3")
        warnings.warn(
            f"kerasfix ({_config.mode} mode) names this model's compiled "
            f"metrics differently from Keras {version}: {', '.join(renamed)} "
            "(and val_ likewise), as Keras 2 named them after the outputs. "
            "Monitor the new names; see kerasfix's README, 'Names'.",
            _config.KerasfixWarning,
            stacklevel=2,
        )


def _build_metrics(wrapped, instance, args, kwargs):
    if not _compiled_by_model(instance):
        return wrapped(*args, **kwargs)
    y_true, y_pred = _bind_build(*args, **kwargs)
    keys = _outputs(y_pred)
    if keys is None:
        return wrapped(*args, **kwargs)
    from keras.src import metrics as metrics_module

    names = keys if isinstance(y_pred, dict) else _names(instance, y_pred)
    for attribute, argument in (
        ("_user_metrics", "metrics"),
        ("_user_weighted_metrics", "weighted_metrics"),
    ):
        metrics = getattr(instance, attribute)
        if not _broadcasts(metrics):
            continue
        if isinstance(metrics, (list, tuple)) and len(metrics) == len(keys) > 1:
            _warn_reread(argument, metrics, names)
        setattr(instance, attribute, _metrics(metrics, keys, metrics_module.Metric))
    unnamed = not isinstance(y_pred, dict) and not instance.output_names
    if unnamed:
        instance.output_names = names
    result = wrapped(_copied(_targets(y_true, y_pred, instance)[0]), _copied(y_pred))
    if unnamed:
        _warn_renamed(
            _adapters.compiled_metric_names(instance, prefixed=False),
            _adapters.compiled_metric_names(instance),
        )
    return result


# Recompiling


def _compile(wrapped, instance, args, kwargs):
    def bind(optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
             weighted_metrics=None, *rest, **more):
        return loss, metrics, weighted_metrics

    if _config.mode is None:
        return wrapped(*args, **kwargs)
    loss, metrics, weighted_metrics = bind(*args, **kwargs)
    # Keras 3 keeps what an earlier compile set and this one leaves out;
    # Keras 2 compiled anew.
    if loss is None:
        instance._compile_loss = None
        instance.loss = None
    if (metrics, weighted_metrics) == (None, None):
        instance._compile_metrics = None
    if metrics is not None and not _is_nested(metrics):
        # One metric alone, which Keras 2 took as a list of one.
        args, kwargs = _with_argument(args, kwargs, 3, "metrics", [metrics])
    if weighted_metrics is not None and not _is_nested(weighted_metrics):
        args, kwargs = _with_argument(args, kwargs, 4, "weighted_metrics", [weighted_metrics])
    result = wrapped(*args, **kwargs)
    for compiled in (instance._compile_loss, instance._compile_metrics):
        if compiled is not None:
            setattr(compiled, _OF_MODEL, True)
    return result


def _with_argument(args, kwargs, position, name, value):
    if len(args) > position:
        return args[:position] + (value,) + args[position + 1:], kwargs
    return args, dict(kwargs, **{name: value})


def install(compile_utils, trainer, model_module):
    """Wraps the builds of CompileLoss and CompileMetrics, their calls,
    `compile`, and the trainer methods that take sample weights; returns
    why it cannot here, or None."""
    why = _adapters.missing_for_compile_forms(compile_utils, trainer)
    owner = _adapters.result_owner(model_module)
    if why is None and (owner is None or "fit" not in vars(owner)):
        why = f"no trainer class of Model in {_adapters.MODEL} defines fit and evaluate"
    if why is not None:
        return why
    for method in ("fit", "evaluate", "train_on_batch", "test_on_batch"):
        _wrapping.replace_method(owner, method, _fit)
    _wrapping.wrap_method(compile_utils.CompileLoss, "build", _build_loss)
    _wrapping.replace_method(compile_utils.CompileLoss, "__call__", _conformed(_left_out_of_loss))
    _wrapping.wrap_method(compile_utils.CompileMetrics, "build", _build_metrics)
    _wrapping.replace_method(
        compile_utils.CompileMetrics, "update_state", _conformed(_left_out_of_metrics)
    )
    _wrapping.wrap_method(trainer, "compile", _compile)
    return None

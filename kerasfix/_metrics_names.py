"""Keras 2's names and order for a model's results.

Keras 3's `model.metrics_names` lists metric objects (`compile_metrics` for
all compiled metrics together), so `dict(zip(model.metrics_names,
model.evaluate(x, y)))` mislabels the values; its list results put the
compiled metrics in name order, and its logs (progress bar, `History`,
callbacks, `return_dict=True`) come out of the compiled step sorted by name.
Keras 2 had one order everywhere, which `_keras2_names` decides: `loss`, the
per-output losses, then output by output its `metrics` then its
`weighted_metrics` in compile order, then the model's other metrics
(`add_metric`'s last). In logs, `val_` names follow in the same order, and
names kerasfix does not know come last, sorted, as Keras sorts them.

The names come from the metric objects, never from `result()` (a metric
may have no variables before its first update), and are worked out once per
set of metrics; an order is worked out once per set of log keys, and for
the logs callbacks get, once per CallbackList (one `fit`, `evaluate` or
`predict`) and set of keys until a model is compiled again: each batch's
logs then cost a lookup and a rebuild, where asking the model for its order
cost several per cent of a small JAX step (README, Performance).
"""

import itertools

from kerasfix import _adapters, _add_metric, _config, _ids, _loss_metrics, _wrapping

_names = _ids.ById()  # model -> (its metrics' ids, names)
_orders = _ids.ById()  # model -> (compile_metrics, compile_loss, {keys: order})
_hook_orders = _ids.ById()  # CallbackList -> {keys of flat logs: order}


def _keras2_names(model, metrics, hosted):
    compile_metrics = getattr(model, "_compile_metrics", None)
    losses = _loss_metrics.metric_names(model)
    compiled, rest = [], []
    for metric in metrics:
        if metric is compile_metrics:
            compiled = _adapters.compiled_metric_names(metric)
        elif metric.name != "loss" and metric.name not in losses:
            rest.append(metric.name)
    head = ["loss"] if any(m.name == "loss" for m in metrics[:1]) else []
    return list(dict.fromkeys(head + losses + compiled + rest + list(hosted)))


def names(model):
    """Every name the model's results carry, in Keras 2's order."""
    metrics = model.metrics
    compile_metrics = getattr(model, "_compile_metrics", None)
    hosted = _add_metric.hosted_names(model)
    key = (tuple(map(id, metrics)), getattr(compile_metrics, "built", None), hosted)
    known = _names.get(id(model))
    if known is None or known[0] != key:
        known = _names.put(model, (key, _keras2_names(model, metrics, hosted)))
    return known[1]


def ordered(model, keys):
    """`keys` (a tuple, of the model's logs) in Keras 2's order, as a tuple."""
    # Names change only with the compiled state or with the keys themselves
    # (a metric made later, add_metric's), so `model.metrics` is not walked
    # for each batch's logs.
    compile_metrics = getattr(model, "_compile_metrics", None)
    compile_loss = getattr(model, "_compile_loss", None)
    known = _orders.get(id(model))
    if known is None or known[0] is not compile_metrics or known[1] is not compile_loss:
        known = _orders.put(model, (compile_metrics, compile_loss, {}))
    order = known[2].get(keys)
    if order is None:
        rank = {name: i for i, name in enumerate(names(model))}

        def place(key):
            if key in rank:
                return (0, rank[key], "")
            if isinstance(key, str) and key.startswith("val_") and key[4:] in rank:
                return (1, rank[key[4:]], "")
            return (2, 0, str(key))

        order = known[2][keys] = tuple(sorted(keys, key=place))
    return order


def _flattened(logs):
    """`logs` with nested dicts flattened as Keras flattens them when it turns
    logs into numbers (a key met later in sorted order wins), so a custom
    step's `{m.name: m.result() for m in self.metrics}`, whose
    `compile_metrics` is a dict, is logged in order too."""
    flat = {}
    for key, value in sorted(logs.items()):
        if isinstance(value, dict):
            flat.update(_flattened(value))
        else:
            flat[key] = value
    return flat


_DICT = itertools.repeat(dict)  # `map` reads as many as it needs


def _nested(logs):
    # In every step, over every key: no Python frame per value.
    return any(map(isinstance, logs.values(), _DICT))


def _in_order(model, logs):
    if _config.mode is None or not isinstance(logs, dict) or model is None:
        return logs
    if any(map(isinstance, logs.values(), _DICT)):
        logs = _flattened(logs)
    keys = tuple(logs)
    order = ordered(model, keys)
    # A comprehension is the quickest rebuild in Python 3.11, for a few keys
    # or for many: this runs for every batch's logs.
    return logs if order == keys else {key: logs[key] for key in order}


def _metrics_names(fget, instance):
    if _config.mode is None:
        return fget(instance)
    return names(instance)


def _flatten_metrics_in_order(original):
    """Keras's `_flatten_metrics_in_order(self, logs)`, which turns the logs
    of every list-returning call into a list, in Keras 2's order."""

    def flatten(self, logs):
        if _config.mode is None or not isinstance(logs, dict):
            return original(self, logs)
        if any(map(isinstance, logs.values(), _DICT)):
            logs = _flattened(logs)
        results = list(map(logs.__getitem__, ordered(self, tuple(logs))))
        return results[0] if len(results) == 1 else results

    return flatten


def _callback_logs(callbacks, logs):
    """`logs` in order for `callbacks`' hooks; remembers the order for the
    CallbackList where logs need no flattening and its model is known."""
    model = _adapters.callback_model(callbacks)
    ordered_logs = _in_order(model, logs)
    if model is not None and isinstance(logs, dict) and not _nested(logs):
        orders = _hook_orders.get(id(callbacks))
        if orders is None:
            orders = _hook_orders.put(callbacks, {})
        orders[tuple(logs)] = tuple(ordered_logs)
    return ordered_logs


def _batch_end(original):
    """A batch-end hook of CallbackList, `(self, batch, logs=None)`, that
    passes the logs on in order: run for every batch, so a replacement, not
    a wrapper, and the order looked up by the CallbackList alone."""

    def hook(self, batch, logs=None):
        if _config.mode is not None and isinstance(logs, dict):
            orders = _hook_orders.get(id(self))
            order = None if orders is None else orders.get(tuple(logs))
            if order is None:
                logs = _callback_logs(self, logs)
            else:
                logs = {key: logs[key] for key in order}
        return original(self, batch, logs)

    return hook


def _forget_hook_orders(wrapped, instance, args, kwargs):
    # A model compiled again may order the same keys otherwise.
    _hook_orders.clear()
    return wrapped(*args, **kwargs)


def _keep_order(wrapped, instance, args, kwargs):
    # Keras sorts the keys as it turns logs into numbers, after kerasfix
    # put them in order for the callbacks.
    logs = args[0] if args else kwargs.get("logs")
    result = wrapped(*args, **kwargs)
    if _config.mode is None or not isinstance(logs, dict) or not isinstance(result, dict):
        return result
    if result.keys() != logs.keys():
        return result  # nested dicts were flattened: Keras's own order
    return {key: result[key] for key in logs}


def _dict_result(original):
    """A method of Model's trainer whose dict result comes in Keras 2's
    order: run on every `train_on_batch`, so a replacement."""

    def method(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        return _in_order(self, result) if isinstance(result, dict) else result

    return method


def _logs_in_order(wrapped, instance, args, kwargs):
    # `logs` is the last argument of every hook wrapped here.
    if _config.mode is None:
        return wrapped(*args, **kwargs)
    if "logs" in kwargs:
        kwargs = dict(kwargs, logs=_callback_logs(instance, kwargs["logs"]))
    elif args:
        args = args[:-1] + (_callback_logs(instance, args[-1]),)
    return wrapped(*args, **kwargs)


_BATCH_END_HOOKS = ("on_train_batch_end", "on_test_batch_end", "on_batch_end")
_END_HOOKS = ("on_epoch_end", "on_test_end", "on_train_end")


def install(compile_utils, trainer, callbacks_module, model_module):
    """Wraps `metrics_names`, list and dict results and the logs callbacks
    get; returns why it cannot here, or None."""
    why = _adapters.missing_for_order(compile_utils, trainer, callbacks_module)
    owner = _adapters.result_owner(model_module)
    if why is None and owner is None:
        why = f"no trainer class of Model in {_adapters.MODEL} defines evaluate"
    if why is not None:
        return why
    _wrapping.wrap_property(trainer, "metrics_names", _metrics_names)
    _wrapping.replace_method(trainer, "_flatten_metrics_in_order", _flatten_metrics_in_order)
    callback_list = callbacks_module.CallbackList
    for hook in _BATCH_END_HOOKS:
        _wrapping.replace_method(callback_list, hook, _batch_end)
    for hook in _END_HOOKS:
        _wrapping.wrap_method(callback_list, hook, _logs_in_order)
    _wrapping.wrap_method(trainer, "compile", _forget_hook_orders)
    for sorter, name in _adapters.log_sorters(trainer, callback_list):
        if _adapters.sorts_alone(sorter, name):
            # Keeps the order it is given at no cost per batch, where a
            # wrapper putting its result back in order cost about 2 % of a
            # 2-head JAX step.
            _wrapping.shadow_builtin(sorter, "sorted", list)
        else:
            _wrapping.wrap_method(sorter, name, _keep_order)
    for method in ("evaluate", "train_on_batch", "test_on_batch"):
        _wrapping.replace_method(owner, method, _dict_result)
    return None

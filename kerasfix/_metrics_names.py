"""`model.metrics_names` as Keras 2 had it: one name per returned value.

Keras 3 lists metric objects (`compile_metrics` for all compiled metrics
together), so `dict(zip(model.metrics_names, model.evaluate(x, y)))`
mislabels the values. kerasfix derives the names from what the model's
metrics return at run time (so any metric the model lists, `add_metric`'s
included, is named without further code) and puts them, and the list
results of `evaluate()`, `train_on_batch()` and `test_on_batch()`, in
Keras 2's order: `loss`, the per-output losses, the compiled metrics, then
the rest as the model lists them.
"""

from kerasfix import _config, _loss_metrics, _wrapping


def _result_names(metric):
    if not getattr(metric, "built", True):
        return []  # compiled metrics before the first step
    result = metric.result()
    return list(result) if isinstance(result, dict) else [metric.name]


def _in_keras2_order(model, names=None):
    """`names` (keys of the model's logs; by default every name the
    model's metrics return) in Keras 2's order.

    Keras 3 orders list results by `model.metrics` and puts names it does
    not find there (every compiled metric's `<out>_<metric>`) after them,
    sorted; Keras 2 kept the compiled metrics in the order they were given.
    """
    listed, compiled = [], []
    for metric in model.metrics:
        returned = _result_names(metric)
        listed += returned
        if metric is getattr(model, "_compile_metrics", None):
            compiled = returned
    if names is None:
        names = dict.fromkeys(listed)  # one value per name, as in the logs
    losses = _loss_metrics.metric_names(model)

    def rank(name):
        if name == "loss":
            return (0, 0)
        for group, known in enumerate((losses, compiled, listed), start=1):
            if name in known:
                return (group, known.index(name))
        return (4, name)  # logs Keras added itself: its own sorted rule

    return sorted(names, key=rank)


def _metrics_names(fget, instance):
    if _config.mode is None:
        return fget(instance)
    return _in_keras2_order(instance)


def _flatten_metrics_in_order(wrapped, instance, args, kwargs):
    logs = args[0] if args else kwargs["logs"]
    if _config.mode is None or not isinstance(logs, dict):
        return wrapped(*args, **kwargs)
    results = [logs[name] for name in _in_keras2_order(instance, logs)]
    return results[0] if len(results) == 1 else results


def install(trainer):
    """Wraps the trainer's `metrics_names` and the order of list results."""
    _wrapping.wrap_property(trainer, "metrics_names", _metrics_names)
    _wrapping.wrap_method(trainer, "_flatten_metrics_in_order", _flatten_metrics_in_order)

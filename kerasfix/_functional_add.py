"""Keras 2's symbolic `model.add_loss(tensor)` and `model.add_metric(tensor,
name=...)` on a functional model, which Keras 3 rejects.

Keras 2 put a layer into the model's graph that takes the tensor and adds
it as a loss (or logs it) each time the model runs, so its value comes from
the model's one forward pass. kerasfix does the same: a hidden layer takes
the tensor, and the model runs that layer's node with its own (what the
model returns is unchanged). The layer calls `add_loss`, which Keras 3 adds
to the loss it trains on, or `add_metric`, which kerasfix's `add_metric`
counts. The layers are not among `model.layers` nor in its config: a saved
model is loaded without them, and saving says so.
"""

import weakref

from kerasfix import _adapters, _add_metric, _config, _wrapping

_tapped = weakref.WeakKeyDictionary()  # model -> the hidden layers' outputs
_classes = {}  # "loss"/"metric" -> the hidden layer class; "functional" -> Functional


def _make_classes(layer_class):
    class AddLoss(layer_class):
        """Adds its input as a loss each time the model runs."""

        def call(self, inputs):
            self.add_loss(inputs)
            return inputs

    class AddMetric(layer_class):
        """Logs its input under `metric_name` each time the model runs."""

        def __init__(self, metric_name, **kwargs):
            super().__init__(**kwargs)
            self.metric_name = metric_name

        def call(self, inputs):
            self.add_metric(inputs, name=self.metric_name, aggregation="mean")
            return inputs

    return {"loss": AddLoss, "metric": AddMetric}


def _not_connected(model, tensor, method):
    return ValueError(
        f"`model.{method}()` was given a tensor that is not computed from the "
        f"inputs of model '{model.name}' ({tensor}). kerasfix adds a symbolic "
        "tensor to a functional model only if the model's inputs compute it: "
        "pass a tensor from the graph between `keras.Input(...)` and the "
        "model's outputs, or add it from a layer's `call()`."
    )


def _tap(model, tensor, layer, method):
    """Runs `layer` on `tensor` wherever `model` runs."""
    from keras.src import backend

    if not isinstance(tensor, backend.KerasTensor):
        raise ValueError(
            f"`model.{method}()` on model '{model.name}' takes symbolic tensors "
            f"of the model's graph; received {tensor!r}. Add other values from "
            "a layer's `call()`."
        )
    tapped = _tapped.get(model, []) + [layer(tensor)]
    try:
        _adapters.run_also(model, tapped)
    except ValueError as error:
        raise _not_connected(model, tensor, method) from error
    _adapters.own_layer(model, layer)
    _tapped[model] = tapped
    # A step traced before is without the layer; JAX makes its metric
    # before tracing one.
    _adapters.retrace(model)
    _add_metric.rediscover(model)


def _add_loss(wrapped, instance, args, kwargs):
    if _config.mode is None:
        return wrapped(*args, **kwargs)

    def bind(loss):
        return loss

    loss = bind(*args, **kwargs)
    for tensor in _adapters.tree().flatten(loss):
        _tap(instance, tensor, _classes["loss"](), "add_loss")


def _add_metric_symbolic(wrapped, instance, args, kwargs):
    # Every layer's `add_metric` in every step passes here: no import.
    if _config.mode is None or not isinstance(instance, _classes["functional"]):
        return wrapped(*args, **kwargs)
    from keras.src import backend

    def bind(value, name=None, **options):
        return value, name, options

    value, name, options = bind(*args, **kwargs)
    if not backend.is_keras_tensor(value):
        return wrapped(*args, **kwargs)
    _add_metric.check_arguments(value, name, options, None)
    _tap(instance, value, _classes["metric"](name), "add_metric")


def _get_config(wrapped, instance, args, kwargs):
    if _config.mode is not None and _tapped.get(instance):
        _config.warn_once(
            f"The config of model '{instance.name}' (what `save` and "
            "`clone_model` use) leaves out what `model.add_loss()` and "
            "`model.add_metric()` added: Keras 3 has no layer kerasfix could "
            "save them as. After loading, add them again from the loaded "
            "model's tensors, e.g. `model.get_layer(name).output`."
        )
    return wrapped(*args, **kwargs)


def install(layer_module, functional_module, function_module):
    """Wraps `Functional.add_loss` and `Layer.add_metric` for a functional
    model's symbolic tensors; returns why it cannot here, or None."""
    why = _adapters.missing_for_functional_add(functional_module, function_module)
    if why is not None:
        return why
    _classes.update(_make_classes(layer_module.Layer), functional=functional_module.Functional)
    _wrapping.wrap_method(functional_module.Functional, "add_loss", _add_loss)
    _wrapping.wrap_method(functional_module.Functional, "get_config", _get_config)
    _wrapping.wrap_method(layer_module.Layer, "add_metric", _add_metric_symbolic)
    return None

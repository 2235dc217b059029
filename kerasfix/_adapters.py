"""The Keras 3 internals kerasfix touches: one adapter per known layout.

Support is decided by what is found on the classes, not by version strings
or class names, so patch releases, nightlies and refactors of a known layout
work unchanged. Nothing here instantiates a Keras class: detection runs
while `import keras` is still under way.
"""

import collections
import contextlib
import importlib
import inspect
import types

COMPILE_UTILS = "keras.src.trainers.compile_utils"
TRAINER = "keras.src.trainers.trainer"
LOSS = "keras.src.losses.loss"
LAYER = "keras.src.layers.layer"
METRIC = "keras.src.metrics.metric"
VERSION = "keras.src.version"
CALLBACKS = "keras.src.callbacks"
MODEL = "keras.src.models.model"
MODELS = "keras.src.models"  # the package: loaded once Functional is whole too
PYTHON_UTILS = "keras.src.utils.python_utils"
TF_TRAINER = "keras.src.backend.tensorflow.trainer"
FUNCTIONAL = "keras.src.models.functional"
FUNCTION = "keras.src.ops.function"
REDUCTION_METRICS = "keras.src.metrics.reduction_metrics"


_Fields = collections.namedtuple(
    "_Fields", "name releases lists_loss_metrics scales_losses", defaults=(False,)
)


# Namedtuples, not dataclasses: `import dataclasses` alone costs more than
# the rest of `import kerasfix`.
class _Adapter(_Fields):
    """How one family of Keras releases keeps its compiled losses.

    `lists_loss_metrics` is True where the trainer's `metrics` already lists
    `CompileLoss.metrics` and `_symbolic_build` already builds CompileLoss.
    `scales_losses` is True where a `Loss` divides its value by the number
    of `tf.distribute` replicas itself (`scale_loss_for_distribution`).
    """

    __slots__ = ()


class FlatLists(_Adapter):
    """Plain loss functions in `flat_losses`, weights in `flat_loss_weights`."""

    __slots__ = ()

    def entries(self, compile_loss):
        return getattr(compile_loss, "flat_losses", None) or []

    def loss_fn(self, entry):
        return entry

    def with_loss_fn(self, entry, fn):
        return fn

    def keras_name(self, entry):
        """Keras 3's own name for a loss entry, where it keeps one."""
        return None

    def weight(self, compile_loss, index):
        return compile_loss.flat_loss_weights[index]

    def metric_name(self, compile_loss, index):
        """What this release calls loss `index`'s own per-output metric
        (without `_loss`), or None where it makes none."""
        entries = self.entries(compile_loss)
        if not self.lists_loss_metrics or len(entries) < 2 or not entries[index]:
            return None
        # Keras 3.5-3.6: the output names when there is one per loss, else
        # the loss's own name.
        names = getattr(compile_loss, "inferred_output_names", None)
        if names is not None and len(names) == len(entries):
            return str(names[index])
        return getattr(entries[index], "name", None)


class PathTuples(_Adapter):
    """`(path, loss, loss_weights, name)` tuples in `_flat_losses`."""

    __slots__ = ()

    def entries(self, compile_loss):
        return getattr(compile_loss, "_flat_losses", None) or []

    def loss_fn(self, entry):
        return entry.loss

    def with_loss_fn(self, entry, fn):
        return entry._replace(loss=fn)

    def keras_name(self, entry):
        """Keras 3's own name for a loss entry, where it keeps one."""
        return entry.name

    def weight(self, compile_loss, index):
        return compile_loss._flat_losses[index].loss_weights

    def metric_name(self, compile_loss, index):
        """What this release calls loss `index`'s own per-output metric
        (without `_loss`), or None where it makes none."""
        entries = self.entries(compile_loss)
        return entries[index].name if len(entries) > 1 else None


FLAT_LISTS = FlatLists("flat-lists", "3.0-3.4", False)
FLAT_LISTS_METRICS = FlatLists("flat-lists+metrics", "3.5-3.6", True)
PATH_TUPLES = PathTuples("path-tuples", "3.7", True)
PATH_TUPLES_SCALED = PathTuples("path-tuples+scaling", "3.8+", True, True)


def missing_for_add_metric(layer_module, trainer, backend):
    """What `add_metric` needs from `Layer` and the trainer and does not
    find, or None.

    Which metrics Keras already lists differs by release (3.4+ lists every
    sublayer's); kerasfix asks the trainer at run time instead of a table.
    """
    layer = getattr(layer_module, "Layer", None)
    if not isinstance(layer, type):
        return f"no Layer class in {LAYER}"
    missing = [m for m in ("add_metric", "_clear_losses") if m not in vars(layer)]
    if missing:
        return f"Layer does not define {', '.join(missing)}"
    readers = [getattr(vars(layer).get(name), "fget", None) for name in ("metrics", "metrics_variables")]
    if not any("_metrics" in _attributes_set(fget) for fget in readers):
        return "Layer keeps its metrics in no Layer._metrics"
    missing = [m for m in ("compute_loss", "_symbolic_build", "metrics") if m not in vars(trainer)]
    if missing:
        return f"{trainer.__name__} does not define {', '.join(missing)}"
    return _jax_drops_updates(trainer, backend)


def layer_metrics(layer):
    """The list of metrics `layer` owns, where a direct `add_metric` puts
    its: `metrics_variables` reads it, and from 3.4 `layer.metrics` and the
    trainer's `metrics` list it."""
    return layer._metrics


def missing_for_functional_add(functional_module, function_module):
    """What symbolic `model.add_loss`/`add_metric` need from `Functional`
    and `Function` and do not find, or None."""
    functional = getattr(functional_module, "Functional", None)
    if not isinstance(functional, type) or "add_loss" not in vars(functional):
        return f"no Functional.add_loss in {FUNCTIONAL}"
    if not callable(getattr(function_module, "map_graph", None)):
        return f"no map_graph in {FUNCTION}"
    function = getattr(function_module, "Function", None)
    runs = _attributes_set(vars(function).get("_run_through_graph") if isinstance(function, type) else None)
    if not {"_nodes_by_depth", "outputs"} <= runs:
        return "Function._run_through_graph runs no _nodes_by_depth"
    return None


def run_also(model, tensors):
    """Makes a functional `model` compute `tensors` whenever it runs, beside
    what it returns: the nodes between its inputs and outputs, and these.
    Raises ValueError where its inputs do not compute them."""
    map_graph = importlib.import_module(FUNCTION).map_graph
    _, nodes_by_depth, _, _ = map_graph(model._inputs, model._outputs + tensors)
    inputs = {id(x) for x in model._inputs}
    for nodes in nodes_by_depth.values():
        for node in nodes:
            if node.is_input and not any(id(x) in inputs for x in node.outputs):
                raise ValueError(f"{node.outputs} is not one of the model's inputs")
    model._nodes_by_depth = nodes_by_depth


def retrace(model):
    """Makes `model`'s next fit, evaluate and predict trace their steps
    again, as `compile` does."""
    model.train_function = model.test_function = model.predict_function = None


def own_layer(model, layer):
    """Makes `layer` one of `model`'s sublayers for its losses and metrics
    (`_flatten_layers`), not one of `model.layers` (nor of its config)."""
    model._layers.append(layer)


def _jax_drops_updates(trainer, backend):
    if backend == "jax" and "stateless_compute_loss" not in vars(trainer):
        return (
            f"{trainer.__name__}.stateless_compute_loss not found: the JAX "
            "trainer of this release drops metric updates made while "
            "computing the loss"
        )
    return None


def missing_for_add_loss(compile_utils, trainer, reduction_metrics):
    """What Keras 2's logged `add_loss` value needs and does not find, or
    None: the trainer's `compute_loss` and the `Mean` its `compile` keeps as
    `_loss_tracker`, which each step updates with that very total."""
    if "compute_loss" not in vars(trainer):
        return f"{trainer.__name__} does not define compute_loss"
    if "_loss_tracker" not in _attributes_set(vars(trainer)["compile"]):
        return f"{trainer.__name__}.compile keeps no _loss_tracker"
    mean = getattr(reduction_metrics, "Mean", None)
    if not isinstance(mean, type) or "update_state" not in vars(mean):
        return f"no Mean class defining update_state in {REDUCTION_METRICS}"
    if "__call__" not in vars(getattr(compile_utils, "CompileLoss", object)):
        return "CompileLoss does not define __call__"
    return None


def loss_tracker(model):
    """The `Mean` a compiled model logs as `loss`, or None."""
    return getattr(model, "_loss_tracker", None)


def is_same_total(values, total):
    """Whether the step logs the very total `compute_loss` returned: that
    tensor, or its `detach()` (torch's train step from Keras 3.16), which
    shares its memory."""
    if values is total:
        return True
    data_ptr = getattr(values, "data_ptr", None)
    return (
        callable(data_ptr)
        and type(values) is type(total)
        and tuple(values.shape) == tuple(total.shape)
        and data_ptr() == total.data_ptr()
    )


def missing_for_order(compile_utils, trainer, callbacks_module):
    """What Keras 2's names and order need and do not find, or None."""
    missing = [
        m for m in ("metrics_names", "_flatten_metrics_in_order") if m not in vars(trainer)
    ]
    if missing:
        return f"{trainer.__name__} does not define {', '.join(missing)}"
    compile_metrics = getattr(compile_utils, "CompileMetrics", None)
    kept = _attributes_set(vars(compile_metrics).get("build")) if compile_metrics else set()
    if not {"_flat_metrics", "_flat_weighted_metrics"} <= kept:
        return "CompileMetrics.build keeps no _flat_metrics and _flat_weighted_metrics"
    if not isinstance(getattr(callbacks_module, "CallbackList", None), type):
        return f"no CallbackList class in {CALLBACKS}"
    return None


def callback_model(callback):
    """The Keras model a callback serves, or None, read without
    `Callback.model`, which on JAX syncs every variable back to the model
    (3.15+) and would do so for each batch's logs."""
    model = vars(callback).get("_model")
    if hasattr(model, "_compile_metrics"):
        return model
    model = getattr(model, "module", None)  # torch DDP wraps the model
    return model if hasattr(model, "_compile_metrics") else None


def missing_for_compile_forms(compile_utils, trainer):
    """What Keras 2's compile forms need and do not find, or None: the
    compile arguments CompileLoss and CompileMetrics keep until `build`."""
    found = {
        "CompileLoss": {"_user_loss", "_user_loss_weights", "output_names"},
        "CompileMetrics": {"_user_metrics", "_user_weighted_metrics", "output_names"},
    }
    for name, kept in found.items():
        cls = getattr(compile_utils, name, None)
        if not isinstance(cls, type) or not {"build", "__init__"} <= vars(cls).keys():
            return f"no {name} with its own build in {COMPILE_UTILS}"
        if not kept <= _attributes_set(vars(cls)["__init__"]):
            return f"{name}.__init__ keeps no {', '.join(sorted(kept))}"
    if "update_state" not in vars(compile_utils.CompileMetrics):
        return "CompileMetrics does not define update_state"
    kept = {"_compile_loss", "_compile_metrics"}
    if not kept <= _attributes_set(vars(trainer)["compile"]):
        return f"{trainer.__name__}.compile keeps no _compile_loss or _compile_metrics"
    return None


def result_owner(model_module):
    """The class whose `evaluate`, `train_on_batch` and `test_on_batch`
    `keras.Model` runs: the backend's trainer, under whatever name."""
    model = getattr(model_module, "Model", None)
    for cls in getattr(model, "__mro__", ()):
        if {"evaluate", "train_on_batch", "test_on_batch"} <= vars(cls).keys():
            return cls
    return None


def log_sorters(trainer, callback_list):
    """`(owner, name)` of each function that turns logs into Python numbers
    and sorts their keys on the way: `python_utils.pythonify_logs` (3.7+),
    `CallbackList._pythonify_logs` (3.6), `Trainer._pythonify_logs`
    (3.0-3.6)."""
    utils = importlib.import_module(PYTHON_UTILS)
    found = [(cls, "_pythonify_logs") for cls in (trainer, callback_list)]
    found.append((utils, "pythonify_logs"))
    return [(owner, name) for owner, name in found if name in vars(owner)]


def _names_called(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_called(const)
    return names


def sorts_alone(owner, name):
    """Whether `owner.name` is a module's function and the one code of its
    module that names `sorted` (Keras 3.7+'s `pythonify_logs`), so a
    `sorted` in the module's globals changes how it sorts and nothing else."""
    if not isinstance(owner, types.ModuleType) or "sorted" in vars(owner):
        return False
    callers = set()
    for key, value in vars(owner).items():
        functions = vars(value).values() if isinstance(value, type) else [value]
        for function in functions:
            code = getattr(function, "__code__", None)
            if getattr(function, "__module__", None) != owner.__name__ or code is None:
                continue
            if "sorted" in _names_called(code):
                callers.add((key, function.__name__))
    return callers == {(name, name)}


def compiled_metric_names(compile_metrics, prefixed=True):
    """The names `CompileMetrics.result()` gives its values, in Keras 2's
    order: output by output, its `metrics` then its `weighted_metrics`
    (`prefixed=False`: as if the outputs had no names).

    Keras's own naming (the same from 3.0 to 3.16) replayed on the metric
    objects, so no `result()` runs: a metric may not even have variables
    before its first update.
    """
    if not compile_metrics.built:
        return []
    counts, named = {}, []
    groups = (compile_metrics._flat_metrics, compile_metrics._flat_weighted_metrics)
    for group, lists in enumerate(groups):
        for output, listed in enumerate(lists):
            if not listed:
                continue
            prefix = f"{listed.output_name}_" if prefixed and listed.output_name else ""
            for position, metric in enumerate(listed.metrics):
                name = prefix + metric.name
                if name in counts and group == 1:
                    name = f"{prefix}weighted_{metric.name}"
                if name in counts:
                    counts[name] += 1
                    name = f"{name}_{counts[name] - 1}"
                else:
                    counts[name] = 1
                named.append(((output, group, position), name))
    return [name for _, name in sorted(named, key=lambda item: item[0])]


def base_trainer(trainer_module):
    """The class `keras.Model` takes `compile` and `fit` from, or None.

    Found by its role, not its name: Keras 3.0-3.15 call it `Trainer`,
    3.16 `BaseTrainer` (and give each backend's subclass the old name).
    """
    found = [
        value
        for value in vars(trainer_module).values()
        if isinstance(value, type)
        and value.__module__ == trainer_module.__name__
        and {"compile", "fit"} <= vars(value).keys()
    ]
    return found[0] if len(found) == 1 else None


RUNS = ("fit", "evaluate", "train_on_batch", "test_on_batch", "predict", "predict_on_batch")

# A model whose class overrides one of these runs its own JAX step, which
# carries no metric variables kerasfix could update (see _add_metric).
JAX_OWN_STEPS = ("train_step", "test_step")


def missing_for_jax_steps(runner, trainer):
    """What `add_metric` in a JAX step of the user's own needs from the JAX
    trainer and does not find, or None: the steps it compares with and the
    functions that make the jitted step that it wraps."""
    wanted = (*JAX_OWN_STEPS, "make_train_function", "make_test_function")
    missing = [m for m in wanted if m not in vars(runner)]
    missing += [f"{trainer.__name__}.{m}" for m in ("reset_metrics", "get_metrics_result") if m not in vars(trainer)]
    return f"{runner.__name__} does not define {', '.join(missing)}" if missing else None


def backend_trainer(model_module, trainer):
    """The backend's subclass of `trainer` that `keras.Model` runs `fit`,
    `evaluate` and `predict` from, or None."""
    model = getattr(model_module, "Model", None)
    for cls in getattr(model, "__mro__", ()):
        if cls is not trainer and issubclass(cls, trainer) and set(RUNS) <= vars(cls).keys():
            return cls
    return None


def direction_setters(callbacks_module):
    """The built-in callbacks whose own `_set_monitor_op` infers, for
    `mode="auto"`, whether the monitored value should go down or up.

    Keras 3.0-3.6: `EarlyStopping` only; `ModelCheckpoint` and
    `ReduceLROnPlateau` decide in `__init__` by Keras 2's own rule (up only
    for names containing "acc"), which already minimises `<out>_loss`.
    Keras 3.15+: `MonitorCallback`, the base of all three (and of
    `OrbaxCheckpoint`). Found by the method, so a release that moves it
    again is covered without a version check.
    """
    found = {
        value
        for value in vars(callbacks_module).values()
        if isinstance(value, type) and "_set_monitor_op" in vars(value)
    }
    return sorted(found, key=lambda cls: cls.__name__)


_DmTree = collections.namedtuple("_DmTree", "flatten pack_sequence_as map_structure")
_tree = None


def tree():
    """Keras's own structure functions for this release (`flatten`,
    `pack_sequence_as`, `map_structure`): the `tree` CompileLoss itself
    uses, `keras.src.tree` from 3.3, `keras.src.utils.tree` in 3.2, dm-tree
    in 3.0-3.1 (whose `pack_sequence_as` is `unflatten_as`)."""
    global _tree
    if _tree is None:
        found = importlib.import_module(COMPILE_UTILS).tree
        if not hasattr(found, "pack_sequence_as"):
            found = _DmTree(found.flatten, found.unflatten_as, found.map_structure)
        _tree = found
    return _tree


def outside_step():
    """Where to make a metric first needed inside a step: on TensorFlow its
    init scope, where Keras makes its own deferred variables. A variable made
    while a step is traced leaves that trace, which TensorFlow keeps, a
    conditional initializer per variable."""
    from keras.src import backend

    if backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.init_scope()


def _attributes_set(function):
    """The attribute names a function's own code reads or writes."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    return set(code.co_names) if code is not None else set()


def detect(compile_utils, trainer_module, loss, backend):
    """Returns `(adapter, None)` or `(None, "what was not found")`."""
    cls = getattr(compile_utils, "CompileLoss", None)
    if not isinstance(cls, type):
        return None, "no CompileLoss class"
    missing = [m for m in ("__call__", "build", "call") if m not in vars(cls)]
    if missing:
        return None, f"CompileLoss does not define {', '.join(missing)}"
    trainer = base_trainer(trainer_module)
    if trainer is None:
        return None, f"no single trainer class with compile and fit in {TRAINER}"
    if not isinstance(vars(trainer).get("metrics"), property):
        return None, f"{trainer.__name__}.metrics is not a property"
    if "_compile_loss" not in _attributes_set(vars(trainer)["compile"]):
        return None, f"{trainer.__name__}.compile keeps no _compile_loss"
    tracks = isinstance(vars(cls).get("metrics"), property)
    # Where `build` keeps the resolved losses tells the layouts apart.
    kept_in = _attributes_set(vars(cls)["build"])
    if "_flat_losses" in kept_in:
        if not tracks:
            return None, "CompileLoss has _flat_losses but no metrics property"
        if hasattr(loss, "scale_loss_for_distribution"):
            if not hasattr(loss, "unscale_loss_for_distribution"):
                return None, "scale_loss_for_distribution has no unscale twin"
            return PATH_TUPLES_SCALED, None
        return PATH_TUPLES, None
    if "flat_losses" not in kept_in:
        return None, "CompileLoss.build keeps its losses in neither flat_losses nor _flat_losses"
    if tracks:
        return FLAT_LISTS_METRICS, None
    if "_symbolic_build" not in vars(trainer):
        return None, f"{trainer.__name__}._symbolic_build not found"
    why = _jax_drops_updates(trainer, backend)
    return (None, why) if why else (FLAT_LISTS, None)


def keras_version():
    """The installed Keras's own version, or None without Keras.

    Asked of Keras itself, so `keras`, `keras-nightly` and a source tree all
    answer; the distribution's metadata only where Keras cannot be imported
    (Keras 2 without TensorFlow).
    """
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        return None
    try:
        import keras
    except ImportError:
        from importlib import metadata

        owners = metadata.packages_distributions().get("keras", [])
        return metadata.version(owners[0]) if owners else None
    version = getattr(keras, "version", None)
    return version() if callable(version) else keras.__version__


def keras2_step_shims(trainer):
    """`(class, None)`: the TensorFlow trainer class that keeps Keras 2's
    `compiled_loss` and `compiled_metrics` (Keras 3's "backwards
    compatibility shims", the same in 3.4, 3.6, 3.15 and 3.16), or
    `(None, "what was not found")`.
    `trainer` is the base trainer, whose `compile` keeps the trackers."""
    module = importlib.import_module(TF_TRAINER)
    shims = ("compiled_loss", "_compiled_metrics_update_state")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and set(shims) <= vars(value).keys()
    ]
    if len(found) != 1:
        return None, f"no single class in {TF_TRAINER} defines {' and '.join(shims)}"
    kept = _attributes_set(vars(trainer)["compile"])
    missing = [m for m in ("_loss_tracker", "_compile_metrics") if m not in kept]
    if missing:
        return None, f"{trainer.__name__}.compile keeps no {', '.join(missing)}"
    return found[0], None

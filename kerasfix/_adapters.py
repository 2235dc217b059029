"""The Keras 3 internals kerasfix touches: one adapter per known layout.

Support is decided by what is found on the classes, not by version strings,
so patch releases and nightlies of a known layout work unchanged.
"""

import collections

COMPILE_UTILS = "keras.src.trainers.compile_utils"
TRAINER = "keras.src.trainers.trainer"
LOSS = "keras.src.losses.loss"


_Fields = collections.namedtuple(
    "_Fields", "name releases lists_loss_metrics scales_losses", defaults=(False,)
)


# Namedtuples, not dataclasses: `import dataclasses` alone costs more than
# the rest of `import kerasfix`.
class _Adapter(_Fields):
    """How one family of Keras releases keeps its compiled losses.

    `lists_loss_metrics` is True where `Trainer.metrics` already lists
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


FLAT_LISTS = FlatLists("flat-lists", "3.0-3.4", False)
FLAT_LISTS_METRICS = FlatLists("flat-lists+metrics", "3.5-3.6", True)
PATH_TUPLES = PathTuples("path-tuples", "3.7", True)
PATH_TUPLES_SCALED = PathTuples("path-tuples+scaling", "3.8+", True, True)


def detect(compile_utils, trainer, loss, backend):
    """Returns `(adapter, None)` or `(None, "what was not found")`."""
    cls = getattr(compile_utils, "CompileLoss", None)
    if cls is None:
        return None, "no CompileLoss class"
    missing = [m for m in ("__call__", "build", "call") if m not in vars(cls)]
    if missing:
        return None, f"CompileLoss does not define {', '.join(missing)}"
    trainer_cls = getattr(trainer, "Trainer", None)
    if not isinstance(vars(trainer_cls or object).get("metrics"), property):
        return None, "Trainer.metrics is not a property"
    tracks = isinstance(vars(cls).get("metrics"), property)
    # `_flat_losses` is set in __init__ from 3.7 on; before, `flat_losses`
    # appears only in build, so ask a throwaway instance.
    if hasattr(cls("mse"), "_flat_losses"):
        if not tracks:
            return None, "CompileLoss has _flat_losses but no metrics property"
        if hasattr(loss, "scale_loss_for_distribution"):
            return PATH_TUPLES_SCALED, None
        return PATH_TUPLES, None
    if tracks:
        return FLAT_LISTS_METRICS, None
    if "_symbolic_build" not in vars(trainer_cls):
        return None, "Trainer._symbolic_build not found"
    if backend == "jax" and "stateless_compute_loss" not in vars(trainer_cls):
        return None, (
            "Trainer.stateless_compute_loss not found: the JAX trainer of "
            "this release drops metric updates made while computing the loss"
        )
    return FLAT_LISTS, None

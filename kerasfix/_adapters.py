"""The Keras 3 internals kerasfix touches, one adapter per known layout.

Support is decided by what is found on the classes, not by version strings,
so patch releases and nightlies of a known layout work unchanged.
"""

import dataclasses

COMPILE_UTILS = "keras.src.trainers.compile_utils"
TRAINER = "keras.src.trainers.trainer"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How one family of Keras releases stores its compiled losses.

    `losses_attr` names the list `CompileLoss.call` iterates; `entry_fn`
    and `with_fn` read and replace the loss function of one entry.
    `lists_loss_metrics` is True where `Trainer.metrics` already includes
    `CompileLoss.metrics` and `_symbolic_build` already builds CompileLoss.
    """

    name: str
    releases: str
    losses_attr: str
    lists_loss_metrics: bool
    entry_fn: object
    with_fn: object
    entry_weight: object

    def entries(self, compile_loss):
        return getattr(compile_loss, self.losses_attr, None) or []


def _plain_fn(entry):
    return entry


def _plain_with_fn(entry, fn):
    return fn


def _tuple_fn(entry):
    return entry.loss


def _tuple_with_fn(entry, fn):
    return entry._replace(loss=fn)


def _plain_weight(compile_loss, index):
    return compile_loss.flat_loss_weights[index]


def _tuple_weight(compile_loss, index):
    return compile_loss._flat_losses[index].loss_weights


ADAPTERS = (
    Adapter(
        "flat-lists",
        "3.0-3.4",
        "flat_losses",
        False,
        _plain_fn,
        _plain_with_fn,
        _plain_weight,
    ),
    Adapter(
        "flat-lists+metrics",
        "3.5-3.6",
        "flat_losses",
        True,
        _plain_fn,
        _plain_with_fn,
        _plain_weight,
    ),
    Adapter(
        "path-tuples",
        "3.7+",
        "_flat_losses",
        True,
        _tuple_fn,
        _tuple_with_fn,
        _tuple_weight,
    ),
)


def detect(compile_utils, trainer, backend):
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
    # `_flat_losses` is set in __init__ from 3.7; before, `flat_losses`
    # appears only in build, so tell them apart on a throwaway instance.
    probe = cls("mse")
    tracks = isinstance(vars(cls).get("metrics"), property)
    if hasattr(probe, "_flat_losses"):
        if not tracks:
            return None, "CompileLoss has _flat_losses but no metrics"
        return ADAPTERS[2], None
    if tracks:
        return ADAPTERS[1], None
    if "_symbolic_build" not in vars(trainer_cls):
        return None, "Trainer._symbolic_build not found"
    if backend == "jax" and "stateless_compute_loss" not in vars(trainer_cls):
        return None, (
            "Trainer.stateless_compute_loss not found: the JAX trainer of "
            "this release drops metric updates made while computing the loss"
        )
    return ADAPTERS[0], None

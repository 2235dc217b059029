"""The patch: what kerasfix changes in Keras, when, and how it takes it back.

`apply` runs from wrapt's post-import hook while `import keras` is still
under way, in every process the start-up hook reaches; so whatever goes
wrong there is undone and reported, never raised out of `import keras`
(unless `KERASFIX_STRICT` asks for an error).

kerasfix is several mechanisms, each detected and installed on its own, so
an internal one of them needs and does not find switches off that one only.
The per-output loss metrics are the base: where Keras keeps its compiled
losses in no known layout, nothing is patched; the callbacks' direction
serves those metrics and goes with them.
"""

import importlib
import sys

from kerasfix import _adapters, _add_loss, _add_metric, _callbacks, _compile_forms
from kerasfix import _config, _functional_add, _keras2_steps, _loss_metrics
from kerasfix import _metrics_names, _wrapping
from kerasfix._config import KerasfixError

MECHANISMS = (
    "loss metrics",
    "callbacks",
    "names and order",
    "add_metric",
    "keras 2 steps",
    "add_loss",
    "compile forms",
    "model.add_loss/add_metric",
)

_adapter = None  # the layout found when the patch went in
_declined = None  # why the installed Keras was not patched at all
off = {}  # mechanism -> why it is off, where the rest is on
not_here = {}  # mechanism -> why this backend cannot have it (not an error)


class NotHere(str):
    """What an install returns where the backend itself rules the
    mechanism out: nothing is missing, so it is no `partial` and no
    strict error, but `status()` says so."""


def _failed(error):
    return f"{type(error).__name__} while patching: {error}"


def _installers(adapter):
    """(mechanism, install) pairs; `install()` returns why that mechanism
    cannot work on this Keras, or None once it is in."""
    from keras.src import backend

    compile_utils = importlib.import_module(_adapters.COMPILE_UTILS)
    trainer = _adapters.base_trainer(importlib.import_module(_adapters.TRAINER))
    loss = importlib.import_module(_adapters.LOSS)
    callbacks = importlib.import_module(_adapters.CALLBACKS)
    model = importlib.import_module(_adapters.MODEL)
    reduction_metrics = importlib.import_module(_adapters.REDUCTION_METRICS)

    def loss_metrics():
        _loss_metrics.install(adapter, compile_utils, trainer, loss)

    def direction():
        if "loss metrics" in off:
            return "it serves the per-output loss metrics, which are off"
        return _callbacks.install(callbacks)

    def order():
        return _metrics_names.install(compile_utils, trainer, callbacks, model)

    def add_metric():
        return _add_metric.install(trainer, backend.backend(), model)

    def keras2_steps():
        if backend.backend() != "tensorflow":
            return NotHere(_keras2_steps.NOT_OFF_TENSORFLOW)
        return _keras2_steps.install(adapter, trainer)

    def add_loss():
        if backend.backend() == "jax":
            return NotHere(_add_loss.NOT_ON_JAX)
        return _add_loss.install(compile_utils, trainer, reduction_metrics)

    def compile_forms():
        return _compile_forms.install(compile_utils, trainer, model)

    def functional_add():
        if "add_metric" in off:
            return "it logs through kerasfix's add_metric, which is off"
        return _functional_add.install(
            importlib.import_module(_adapters.LAYER),
            importlib.import_module(_adapters.FUNCTIONAL),
            importlib.import_module(_adapters.FUNCTION),
        )

    installs = (
        loss_metrics, direction, order, add_metric, keras2_steps, add_loss, compile_forms,
        functional_add,
    )
    return zip(MECHANISMS, installs)


def _detect():
    from keras.src import backend

    return _adapters.detect(
        importlib.import_module(_adapters.COMPILE_UTILS),
        importlib.import_module(_adapters.TRAINER),
        importlib.import_module(_adapters.LOSS),
        backend.backend(),
    )


def _install_each(adapter):
    for name, install in _installers(adapter):
        mark = _wrapping.mark()
        try:
            why = install()
        except Exception as error:
            why = _failed(error)
        if isinstance(why, NotHere):
            not_here[name] = str(why)
        elif why is not None:
            _wrapping.restore(mark)
            if name == "loss metrics":
                _loss_metrics.uninstall()
            off[name] = why


def apply(_module=None):
    """Patches Keras once `keras.Model` (and so all kerasfix touches) is
    loaded; wrapt's hook passes the module, which is looked up by name."""
    global _adapter, _declined
    with _config.lock:
        if _config.mode is None or _wrapping.patched():
            return
        off.clear()
        not_here.clear()
        try:
            adapter, why = _detect()
            if adapter is not None:
                _install_each(adapter)
        except Exception as error:
            adapter, why = None, _failed(error)
        if adapter is not None and len(off) == len(MECHANISMS):
            adapter, why = None, "; ".join(f"{k}: {v}" for k, v in off.items())
        if adapter is None:
            _undo()
            _declined = why
            _say(
                f"kerasfix did not patch Keras {_version()}: {why}. "
                "Keras runs as it is: its own per-output loss metrics, names, "
                "order, callbacks and `add_metric`."
            )
            return
        _adapter, _declined = adapter, None
        if off:
            reasons = "; ".join(f"{name}: {why}" for name, why in off.items())
            if _config.strict:  # all or nothing: undone before raising
                undo()
            _say(
                f"kerasfix left part of its patch off on Keras {_version()} "
                f"({reasons}); there Keras runs as it is. The rest is on."
            )


def _say(message):
    if _config.strict:
        raise KerasfixError(message + " Unset KERASFIX_STRICT to run anyway.")
    _config.warn_once(message)


def _version():
    # `keras.version()` is not defined yet while `import keras` runs.
    module = sys.modules.get(_adapters.VERSION)
    return getattr(module, "__version__", "(unknown version)")


def _undo():
    _loss_metrics.uninstall()
    _add_metric.uninstall()
    _add_loss.uninstall()
    _wrapping.restore()


def undo():
    """Restores every patched attribute that still holds kerasfix's wrapper,
    and the loss functions of every CompileLoss kerasfix built."""
    global _adapter
    with _config.lock:
        _undo()
        _adapter = None
        off.clear()
        not_here.clear()

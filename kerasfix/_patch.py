"""The patch: what kerasfix changes in Keras, when, and how it takes it back.

`apply` runs from wrapt's post-import hook while `import keras` is still
under way, in every process the start-up hook reaches; so whatever goes
wrong there is undone and reported as a declined patch, never raised out of
`import keras` (unless `KERASFIX_STRICT` asks for an error).
"""

import importlib
import sys

from kerasfix import _adapters, _add_metric, _callbacks, _config
from kerasfix import _loss_metrics, _metrics_names, _wrapping
from kerasfix._config import KerasfixError

_adapter = None  # the layout found when the patch went in
_declined = None  # why the installed Keras was not patched


def _install(trainer_module):
    """Detects the layout and patches; returns `(adapter, why not)`."""
    from keras.src import backend

    compile_utils = importlib.import_module(_adapters.COMPILE_UTILS)
    loss = importlib.import_module(_adapters.LOSS)
    adapter, why = _adapters.detect(
        compile_utils, trainer_module, loss, backend.backend()
    )
    if adapter is not None:
        trainer = _adapters.base_trainer(trainer_module)
        _loss_metrics.install(adapter, compile_utils, trainer, loss)
        _add_metric.install(trainer)
        _metrics_names.install(trainer)
        _callbacks.install(importlib.import_module(_adapters.CALLBACKS))
    return adapter, why


def apply(trainer_module):
    """Patches Keras once its trainer module (and so CompileLoss) is loaded."""
    global _adapter, _declined
    with _config.lock:
        if _config.mode is None or _wrapping.patched():
            return
        try:
            adapter, why = _install(trainer_module)
        except Exception as error:
            _undo()
            adapter, why = None, f"{type(error).__name__} while patching: {error}"
        if adapter is not None:
            _adapter, _declined = adapter, None
            return
        _declined = why
        message = (
            f"kerasfix did not patch Keras {_version()}: {why}. "
            "Keras runs as it is: its own per-output loss metrics, names, "
            "callbacks and `add_metric`."
        )
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
    _wrapping.restore()


def undo():
    """Restores every patched attribute that still holds kerasfix's wrapper,
    and the loss functions of every CompileLoss kerasfix built."""
    global _adapter
    with _config.lock:
        _undo()
        _adapter = None

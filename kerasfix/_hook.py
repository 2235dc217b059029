"""When the patch lands: as `keras.Model`'s module is imported, or at once.

wrapt's post-import hook does the work. wrapt itself is imported only once
Keras is, because wrapt 2 imports asyncio, which would make `import kerasfix`
(and every process the `.pth` starts with `KERASFIX` set) three times slower
in programs that never use Keras.
"""

import sys

from kerasfix import _adapters


_installed = False
failed = None  # why kerasfix's own modules could not load (wrapt missing)


def install():
    """Patches Keras now if `keras.Model` is loaded, else once it is."""
    global _installed
    if _installed:
        if failed is None and _adapters.MODELS in sys.modules:
            from kerasfix import _patch

            _patch.apply()
        return
    _installed = True
    if "keras" in sys.modules:
        _register()  # wrapt's hook fires at once for a loaded module
    else:
        sys.meta_path.insert(0, _KerasImportFinder())


def _register():
    global failed
    from kerasfix import _config

    try:
        import wrapt

        from kerasfix import _patch
    except Exception as error:
        # A broken install of kerasfix's own dependencies must not make
        # `import keras` fail: decline, as for an unknown Keras.
        failed = f"{type(error).__name__}: {error}"
        message = (
            f"kerasfix could not load ({failed}); Keras runs as it is. "
            "Reinstall kerasfix (`pip install --force-reinstall kerasfix`)."
        )
        if _config.strict:
            raise _config.KerasfixError(message + " Unset KERASFIX_STRICT to run anyway.")
        _config.warn_once(message)
        return
    # The package of `keras.Model`, not compile_utils, the trainer or
    # `Model`'s own module: by the time it is loaded, every class kerasfix
    # patches (the backend's trainer and `Functional` included) is whole,
    # where a hook on a module Keras imports on the way would find the
    # modules that import it half-built.
    wrapt.register_post_import_hook(_patch.apply, _adapters.MODELS)


class _KerasImportFinder:
    """Registers wrapt's hook as `import keras` begins; finds no module.

    It stays in `sys.meta_path` once done: removing it while the import
    system walks that list could skip the finder after it.
    """

    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "keras" and not self.done:
            self.done = True
            _register()
        return None

"""When the patch lands: as Keras's trainer module is imported, or at once.

wrapt's post-import hook does the work. wrapt itself is imported only once
Keras is, because wrapt 2 imports asyncio, which would make `import kerasfix`
(and every process the `.pth` starts with `KERASFIX` set) three times slower
in programs that never use Keras.
"""

import sys

from kerasfix import _adapters


_installed = False


def install():
    """Patches Keras now if its trainer module is loaded, else once it is."""
    global _installed
    if _installed:
        if _adapters.TRAINER in sys.modules:
            from kerasfix import _patch

            _patch.apply(sys.modules[_adapters.TRAINER])
        return
    _installed = True
    if "keras" in sys.modules:
        _register()  # wrapt's hook fires at once for a loaded module
    else:
        sys.meta_path.insert(0, _KerasImportFinder())


def _register():
    import wrapt

    from kerasfix import _patch

    # The trainer module, not compile_utils: it imports CompileLoss, and is
    # half-built while a hook on compile_utils would run.
    wrapt.register_post_import_hook(_patch.apply, _adapters.TRAINER)


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

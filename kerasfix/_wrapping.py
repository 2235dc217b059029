"""Every attribute kerasfix replaces on a Keras class, and how to put it back.

Each mechanism (loss metrics, callbacks, ...) replaces attributes only
through these functions, so `restore()` can undo all of them, and only
where the attribute still holds kerasfix's replacement.

Methods are wrapped by plain functions that call the wrapper as wrapt's
`wrap_function_wrapper` would: `wrapper(wrapped, instance, args, kwargs)`.
Many run in every step of a Keras loop, where a call through wrapt's
FunctionWrapper costs about 0.6 us more than through a plain function
(several us in a `fit` loop; `benchmarks/calls.py`). What runs on every
`train_on_batch` is replaced outright (`replace_method`,
`replace_property`): one frame, where a wrapper is two, plus the bound
method and the argument tuple it makes. `functools.wraps` gives
the replacement the original's module and `__wrapped__`, so TensorFlow's
AutoGraph leaves it unconverted, as it leaves Keras's own code.
"""

import functools
import types

_patches = []  # (owner, attribute, original or None, replacement)


def function_of(owner, name):
    """`owner.name`, a plain function, as `wrap_method` wraps it; else an
    error naming it (KeyError if missing)."""
    original = vars(owner)[name]
    if not isinstance(original, types.FunctionType):
        raise TypeError(
            f"{getattr(owner, '__name__', owner)}.{name} is a "
            f"{type(original).__name__}, not the function kerasfix wraps"
        )
    return original


def wrap_method(owner, name, wrapper):
    """`wrapper(wrapped, instance, args, kwargs)` around `owner.name`, a
    function of a class or a module."""
    original = function_of(owner, name)
    if isinstance(owner, type):

        @functools.wraps(original)
        def replacement(self, *args, **kwargs):
            return wrapper(original.__get__(self, owner), self, args, kwargs)

    else:

        @functools.wraps(original)
        def replacement(*args, **kwargs):
            return wrapper(original, None, args, kwargs)

    setattr(owner, name, replacement)
    _patches.append((owner, name, original, replacement))


def replace_method(owner, name, make):
    """`make(original)` in place of `owner.name`: for the hottest paths,
    where `wrap_method`'s extra call counts (`benchmarks/calls.py`)."""
    original = function_of(owner, name)
    replacement = functools.wraps(original)(make(original))
    setattr(owner, name, replacement)
    _patches.append((owner, name, original, replacement))


def shadow_builtin(module, name, value):
    """`value` as `name` in `module`'s globals, where Python looks before
    its builtins: what every function of the module then calls by `name`."""
    if name in vars(module):
        raise KeyError(f"{module.__name__} already defines {name}")
    setattr(module, name, value)
    _patches.append((module, name, None, value))


def wrap_property(owner, name, wrapper):
    """A property whose getter is `wrapper(original_fget, instance)`."""
    original = vars(owner)[name]

    @functools.wraps(original.fget)
    def fget(self):
        return wrapper(original.fget, self)

    replacement = property(fget, original.fset, original.fdel, original.__doc__)
    setattr(owner, name, replacement)
    _patches.append((owner, name, original, replacement))


def replace_property(owner, name, make):
    """A property whose getter is `make(original_fget)`: `wrap_property`
    without its extra call, for properties read in every step."""
    original = vars(owner)[name]
    fget = functools.wraps(original.fget)(make(original.fget))
    replacement = property(fget, original.fset, original.fdel, original.__doc__)
    setattr(owner, name, replacement)
    _patches.append((owner, name, original, replacement))


def add_property(owner, name, fget, doc):
    """A property the class does not define itself."""
    replacement = property(fget, doc=doc)
    setattr(owner, name, replacement)
    _patches.append((owner, name, None, replacement))


def patched():
    return bool(_patches)


def mark():
    """A point `restore(mark)` can undo back to (one mechanism's patches)."""
    return len(_patches)


def restore(to=0):
    """Puts back, newest first, every attribute replaced since `to` that
    still holds our replacement."""
    while len(_patches) > to:
        owner, name, original, replacement = _patches.pop()
        if vars(owner).get(name) is not replacement:
            continue
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)

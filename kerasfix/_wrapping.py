"""Every attribute kerasfix replaces on a Keras class, and how to put it back.

Each mechanism (loss metrics, callbacks, ...) replaces attributes only
through these functions, so `restore()` can undo all of them, and only
where the attribute still holds kerasfix's replacement.
"""

import functools

import wrapt

_patches = []  # (owner, attribute, original or None, replacement)


def wrap_method(owner, name, wrapper):
    """`wrapper(wrapped, instance, args, kwargs)` around `owner.name`."""
    original = vars(owner)[name]
    wrapt.wrap_function_wrapper(owner, name, wrapper)
    _patches.append((owner, name, original, vars(owner)[name]))


def wrap_property(owner, name, wrapper):
    """A property whose getter is `wrapper(original_fget, instance)`."""
    original = vars(owner)[name]

    @functools.wraps(original.fget)
    def fget(self):
        return wrapper(original.fget, self)

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

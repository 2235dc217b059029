"""State kept per Keras object and read in every step or call.

A `weakref.WeakKeyDictionary` lookup runs Python code (it makes a new
`weakref.ref` each time), twice as long as a dict's (120 against 60 ns
here), and kerasfix's hot paths make about ten per `train_on_batch`. A
`ById` is a plain dict keyed by `id(obj)`, read with its own `get`; the
entry goes when the object does, as a `WeakKeyDictionary`'s would: CPython
runs the callback before it frees the object, so no other object can meet
that id while the entry is there.
"""

import weakref


class ById(dict):
    """`{id(obj): value}` for objects that are alive; `put` adds to it."""

    def put(self, obj, value):
        """`value`, kept for `obj` while `obj` lives."""
        key = id(obj)
        if key not in self:
            weakref.finalize(obj, self.pop, key, None).atexit = False
        self[key] = value
        return value

"""Keras 2's names for per-output loss metrics."""

import collections.abc

from kerasfix import _adapters


def flatten_with_names(structure):
    """`(leaf, name)` pairs in Keras's own flatten order; a leaf's name joins
    the dict keys on its way (None where there are none).

    The order is Keras's (an `OrderedDict` in insertion order from 3.3,
    sorted by dm-tree before), as `output_names` follow it. Paths come from
    packing each leaf's position back into the structure, not from Keras's
    `flatten_with_path`: 3.3-3.x lack it, and 3.15's torch one numbers a
    namedtuple's fields in another order than it flattens them.
    """
    tree = _adapters.tree()
    leaves = tree.flatten(structure)
    names = [None] * len(leaves)

    def walk(node, keys):
        if isinstance(node, collections.abc.Mapping):
            for key, value in node.items():
                walk(value, keys + (str(key),))
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value, keys)
        elif isinstance(node, int):
            names[node] = "/".join(keys) or None

    walk(tree.pack_sequence_as(structure, list(range(len(leaves)))), ())
    return list(zip(leaves, names))


def keras2_names(compile_loss, y_pred):
    """Keras 2's name for each flat output, as its per-output metrics had.

    A functional model's output layer names; else dict keys; else
    `output_<i>`. Repeated names get `_1`, `_2` ... as Keras 2's functional
    models did for several outputs of one layer.
    """
    leaves = flatten_with_names(y_pred)
    names = [name for _, name in leaves]
    output_names = compile_loss.output_names
    if output_names and len(output_names) == len(names):
        names = [str(n) for n in output_names]
    distinct = []
    for i, name in enumerate(names):
        distinct.append(unique(name or f"output_{i + 1}", distinct))
    return [leaf for leaf, _ in leaves], distinct


def keras36_names(compile_loss, y_pred):
    """Keras 3.5-3.6's name for each flat output, for `weighted` mode.

    A dict's keys when the model returns a dict; else the model's output
    names; None where the outputs are not named that way (Keras 3.6 then
    names the metric after the loss, which the caller knows).
    """
    leaves = [leaf for leaf, _ in flatten_with_names(y_pred)]
    if isinstance(y_pred, dict):
        names = sorted(y_pred)
    else:
        names = compile_loss.output_names
    if not names or len(names) != len(leaves):
        names = [None] * len(leaves)
    return leaves, [None if n is None else str(n) for n in names]


def unique(name, taken):
    """`name`, or Keras 2's `name_1`, `name_2` ... if it is taken."""
    proposal, count = name, 0
    while proposal in taken:
        count += 1
        proposal = f"{name}_{count}"
    return proposal

"""Keras 2's names for per-output loss metrics."""


def flatten_with_names(structure, prefix=()):
    """Leaves in `keras.tree.flatten` order, with their dict-key paths."""
    if isinstance(structure, dict):
        for key in sorted(structure):
            yield from flatten_with_names(structure[key], prefix + (key,))
    elif isinstance(structure, (list, tuple)):
        for item in structure:
            yield from flatten_with_names(item, prefix + (None,))
    else:
        named = [str(k) for k in prefix if k is not None]
        yield structure, "/".join(named) if named else None


def keras2_names(compile_loss, y_pred):
    """Keras 2's name for each flat output, as its per-output metrics had.

    A functional model's output layer names; else dict keys; else
    `output_<i>`. Repeated names get `_1`, `_2` ... as Keras 2's functional
    models did for several outputs of one layer.
    """
    leaves = list(flatten_with_names(y_pred))
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

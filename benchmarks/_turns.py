"""Step times of models that take turns training, shared by the benchmarks.

This host's speed drifts by tens of per cent within seconds, so the models
take short turns in an order that rotates each round, and each meets the
same drift. A step's time runs from one step's end to the next one's, so
`fit`'s own set-up is left out.
"""

import statistics
import time


def take_turns(models, rounds, fit):
    """Every step time of each model, and each round's median per model.

    `models` maps names to models; `fit(model, callbacks)` runs one turn.
    """
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step: JAX runs ahead otherwise
            self.ends.append(time.perf_counter())

    names = list(models)
    steps = {name: [] for name in names}
    medians = []
    for r in range(rounds):
        turn = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            clock = Clock()
            fit(models[name], [clock])
            turn[name] = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
            steps[name] += turn[name]
        medians.append({name: statistics.median(t) for name, t in turn.items()})
    return steps, medians


def ratio(steps, medians, name, baseline):
    """`name`'s median step time over `baseline`'s, and the quartiles of
    the same ratio taken within each round (how far the host's speed moved)."""
    overall = statistics.median(steps[name]) / statistics.median(steps[baseline])
    per_round = [m[name] / m[baseline] for m in medians]
    return overall, statistics.quantiles(per_round, n=4)

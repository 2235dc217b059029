"""Several devices: tf.distribute.MirroredStrategy and JAX DataParallel.

Each run is a fresh interpreter: devices must be set up before the backend
starts. One model with built-in losses, one with a custom `Loss` whose
`call` returns a scalar; each evaluated on one device and on two, with
kerasfix and without it. Keras's own unpatched numbers are the reference, so
a kerasfix bug fails and never skips.
"""

import json
import os
import subprocess
import sys

import pytest

keras = pytest.importorskip("keras")

from support import backend, keras_version  # noqa: E402

SCRIPT = r"""
import json, os
import numpy as np
if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import kerasfix
import keras

class ScalarMAE(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

LOSSES = {"builtin": ["mse", "mae"], "scalar": ["mse", ScalarMAE()]}

def evaluate(losses):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    m = keras.Model(inp, [keras.layers.Dense(1, name="a")(h),
                          keras.layers.Dense(1, name="b")(h)])
    m.compile(keras.optimizers.SGD(0.0), loss=losses, loss_weights=[0.5, 3.0])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = [rng.normal(size=(64, 1)).astype("float32") for _ in range(2)]
    return m.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)

def both(losses):
    runs = {"one": evaluate(losses)}
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            runs["two"] = evaluate(losses)
    else:
        import jax
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()))
        runs["two"] = evaluate(losses)
        keras.distribution.set_distribution(None)
    return runs

out = {"status": kerasfix.status()}
out.update({kind: both(losses) for kind, losses in LOSSES.items()})
kerasfix.disable()
out["upstream"] = {kind: both(losses) for kind, losses in LOSSES.items()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs():
    if backend() not in ("tensorflow", "jax"):
        pytest.skip("tf.distribute and JAX DataParallel only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    env.update(
        KERAS_BACKEND=backend(),
        KERASFIX="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    if result["status"]["effective"] != "patched":
        pytest.skip("kerasfix does not patch here")
    return result


def weighted_sum(logs):
    return 0.5 * logs["a_loss"] + 3.0 * logs["b_loss"]


def keras_agrees(runs):
    """Whether unpatched Keras's own `loss` on two devices is its one-device
    value (built-in losses): from Keras 3.10 under tf.distribute, from 3.2
    under JAX DataParallel."""
    upstream = runs["upstream"]["builtin"]
    return upstream["two"]["loss"] == pytest.approx(upstream["one"]["loss"], rel=1e-5)


@pytest.mark.parametrize("kind", ["builtin", "scalar"])
def test_total_loss_on_two_devices_is_keras_own(runs, kind):
    for devices in ("one", "two"):
        ours, theirs = runs[kind][devices], runs["upstream"][kind][devices]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6)


def test_weighted_per_output_losses_add_up_to_loss_on_two_devices(runs):
    for devices in ("one", "two"):
        logs = runs["builtin"][devices]
        assert weighted_sum(logs) == pytest.approx(logs["loss"], rel=1e-5)


def test_keras_agrees_with_one_device_where_the_readme_says(runs):
    if backend() == "tensorflow":
        assert keras_agrees(runs) is (keras_version() >= (3, 10))
    elif keras_version() >= (3, 2):
        assert keras_agrees(runs)


def test_per_output_losses_on_two_devices_equal_one_device(runs):
    one, two = runs["builtin"]["one"], runs["builtin"]["two"]
    if keras_agrees(runs):
        for key in ("a_loss", "b_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-5)
    else:  # they follow Keras's own aggregation, and add up to its `loss`
        upstream = runs["upstream"]["builtin"]["two"]["loss"]
        assert weighted_sum(two) == pytest.approx(upstream, rel=1e-5)


def test_scalar_custom_loss_reports_its_one_device_value(runs):
    """A custom `Loss` whose `call` returns a scalar (Keras 3.8+ reports it
    times the number of devices under tf.distribute)."""
    if not keras_agrees(runs):
        upstream = runs["upstream"]["builtin"]
        pytest.skip(
            f"unpatched Keras {keras.__version__}'s own `loss` on two devices is "
            f"not its one-device value ({upstream['two']['loss']:.4f} vs "
            f"{upstream['one']['loss']:.4f}), so no metric is"
        )
    one, two = runs["scalar"]["one"], runs["scalar"]["two"]
    for key in ("a_loss", "b_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5)

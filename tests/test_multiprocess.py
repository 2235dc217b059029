"""Several processes: MultiWorkerMirroredStrategy, JAX multi-process, torch DDP.

Two processes on 127.0.0.1 (CPU, gloo where the engine needs it) train and
evaluate the same model on one dataset, as a team would on two machines; a
third process runs it alone for the one-process values. Each process runs
Keras first unpatched (for Keras's own `loss`), then with kerasfix, one model
with built-in losses and one with a custom `Loss` whose `call` returns a
scalar. The processes get their own session: on a timeout the whole group
is killed, nothing is left behind.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

keras = pytest.importorskip("keras")

from support import backend, loss_is_per_batch  # noqa: E402

TIMEOUT = 300  # seconds for all three processes together
ENGINES = {
    "tensorflow": "MultiWorkerMirroredStrategy",
    "jax": "JAX multi-process",
    "torch": "torch DistributedDataParallel",
}

SCRIPT = r"""
import json, os, traceback
import numpy as np
engine, world = os.environ["KERAS_BACKEND"], int(os.environ["WORLD_SIZE"])
rank = int(os.environ["RANK"])
if engine == "tensorflow" and world > 1:  # TF_CONFIG names both workers
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
if engine == "jax" and world > 1:
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{os.environ['MASTER_PORT']}",
        num_processes=world, process_id=rank)
if engine == "torch" and world > 1:  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    import torch.distributed
    torch.distributed.init_process_group("gloo")
import kerasfix
import keras
keras.config.disable_traceback_filtering()  # errors name the Keras function
if engine == "jax" and world > 1:  # one batch over every process's devices
    import inspect
    parallel = keras.distribution.DataParallel
    # Keras 3.2-3.4 always shard the dataset among processes themselves;
    # 3.6+ can be told that each process feeds its own share (see data()).
    keras_shards = "auto_shard_dataset" not in inspect.signature(parallel).parameters
    own_share = {} if keras_shards else {"auto_shard_dataset": False}
    keras.distribution.set_distribution(parallel(devices=jax.devices(), **own_share))

class ScalarMAE(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

LOSSES = {"builtin": ["mse", "mae"], "scalar": ["mse", ScalarMAE()]}
BATCH = 16  # global: 40 samples make 16, 16, 8; 20 make 16, 4

def arrays(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, [rng.normal(size=(n, 1)).astype("float32") for _ in range(2)]

def data(n, seed):
    # What each process feeds: tf.distribute shards the arrays itself, and
    # Keras 3.2-3.4 a tf.data.Dataset among JAX processes; otherwise each
    # process feeds its own share of every global batch, for JAX as a
    # tf.data.Dataset (the one input Keras 3.6 takes there).
    x, y = arrays(n, seed)
    if engine == "tensorflow" or world == 1:
        return x, y, BATCH
    if engine == "jax":
        import tensorflow as tf
        if keras_shards:
            return tf.data.Dataset.from_tensor_slices((x, tuple(y))).batch(BATCH), None, None
        share = (x[rank::world], tuple(t[rank::world] for t in y))
        return tf.data.Dataset.from_tensor_slices(share).batch(BATCH // world), None, None
    return x[rank::world], [t[rank::world] for t in y], BATCH // world

def run(losses):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    m = keras.Model(inp, [keras.layers.Dense(1, name="a")(h),
                          keras.layers.Dense(1, name="b")(h)])
    m.compile(keras.optimizers.SGD(0.0), loss=losses, loss_weights=[0.5, 3.0])
    x, y, batch = data(40, 0)
    val_x, val_y, _ = data(20, 1)
    history = m.fit(x, y, batch_size=batch, shuffle=False, verbose=0,
                    validation_data=val_x if val_y is None else (val_x, val_y))
    fit = {k: v[-1] for k, v in history.history.items()}
    x, y, batch = data(20, 2)
    return {"fit": {k: v for k, v in fit.items() if not k.startswith("val_")},
            "validation": {k[4:]: v for k, v in fit.items() if k.startswith("val_")},
            "evaluate": m.evaluate(x, y, batch_size=batch, return_dict=True, verbose=0)}

def runs():
    return {kind: run(losses) for kind, losses in LOSSES.items()}

def keras_error(error):
    # Where in Keras and why Keras itself failed, in one line.
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/keras/" in f.filename]
    where = f"{frames[-1].name} ({frames[-1].filename.split('/keras/')[-1]})" if frames else "?"
    lines = str(error).splitlines() or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(error).__name__} in Keras's {where}: {text}"

def main():
    try:
        unpatched = runs()
    except Exception as error:
        if world == 1:
            raise
        return {"keras_error": keras_error(error)}  # Keras cannot run this engine
    out = {"unpatched": unpatched}
    kerasfix.enable()
    out["patched"], out["status"] = runs(), kerasfix.status()
    return out

if engine == "tensorflow" and world > 1:
    with strategy.scope():
        out = main()
else:
    out = main()
print(json.dumps(out))
"""


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def environments():
    """The one-process environment, then one per process of the pair."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KERASFIX")}
    base.update(
        KERAS_BACKEND=backend(),
        KERASFIX="0",  # the script enables kerasfix after its unpatched run
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
    )
    ports = free_ports(2)
    workers = [f"127.0.0.1:{port}" for port in ports]
    envs = [dict(base, RANK="0", WORLD_SIZE="1")]
    for rank in range(2):
        env = dict(
            base,
            RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(ports[0]),
        )
        if backend() == "tensorflow":
            env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}
            )
        envs.append(env)
    return envs


def run_processes(envs):
    """Runs the script once per environment, all at once; kills every
    process group still running after TIMEOUT seconds."""
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in envs]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,  # its own process group, killed below
        )
        for env, (out, err) in zip(envs, files)
    ]
    deadline = time.monotonic() + TIMEOUT
    timed_out = False
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # a leader still running keeps its group's id for it
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    logs = []
    for out, err in files:
        out.seek(0)
        err.seek(0)
        logs.append((out.read(), err.read()))
        out.close()
        err.close()
    if timed_out:
        pytest.fail(f"not done within {TIMEOUT} s, killed: {logs[1][1][-2000:]}")
    for proc, (_, stderr) in zip(procs, logs):
        assert proc.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.splitlines()[-1]) for stdout, _ in logs]


def engine_unavailable():
    """Why this Keras and backend cannot run several processes here, or None."""
    if backend() == "torch":
        from keras.src.backend.torch import trainer

        if not any(hasattr(c, "_initialize_ddp") for c in vars(trainer).values()):
            return (
                f"Keras {keras.__version__}'s torch trainer has no "
                "DistributedDataParallel support (it arrives in 3.16)"
            )
    if backend() == "jax":
        import jax

        if "jax_cpu_collectives_implementation" not in jax.config.values:
            return f"JAX {jax.__version__} has no CPU collectives across processes"
    if backend() == "jax" and importlib.util.find_spec("tensorflow") is None:
        return "Keras shards only a tf.data.Dataset among JAX processes: no TensorFlow"
    return None


@pytest.fixture(scope="module")
def runs():
    if backend() not in ENGINES:
        pytest.skip(f"{', '.join(ENGINES.values())} only")
    reason = engine_unavailable()
    if reason:
        pytest.skip(reason)
    one, two, _ = run_processes(environments())
    if "keras_error" in two:
        pytest.skip(
            f"Keras {keras.__version__} itself fails under {ENGINES[backend()]}, "
            f"without kerasfix: {two['keras_error']}"
        )
    if two["status"]["effective"] != "patched":
        pytest.skip(f"kerasfix does not patch here: {two['status']['internals']}")
    return {"one": one, "two": two}


PHASES = ("fit", "validation", "evaluate")


def weighted_sum(logs):
    return 0.5 * logs["a_loss"] + 3.0 * logs["b_loss"]


@pytest.mark.parametrize("phase", PHASES)
def test_weighted_per_output_losses_add_up_to_loss_in_two_processes(runs, phase):
    if loss_is_per_batch():
        pytest.skip("Keras 3.0-3.1 average `loss` per batch, whatever its size")
    for processes in ("one", "two"):
        logs = runs[processes]["patched"]["builtin"][phase]
        assert weighted_sum(logs) == pytest.approx(logs["loss"], rel=1e-5)


def keras_matches_one_process(runs, phase):
    """Skips unless Keras's own `loss`, unpatched, in two processes equals
    one process's: where Keras's own aggregation differs, so do all its
    metrics."""
    one = runs["one"]["unpatched"]["builtin"][phase]["loss"]
    two = runs["two"]["unpatched"]["builtin"][phase]["loss"]
    if two != pytest.approx(one, rel=1e-5):
        pytest.skip(
            f"Keras {keras.__version__}'s own `loss` ({phase}) in two "
            f"processes differs from one process ({two} vs {one})"
        )


@pytest.mark.parametrize("phase", PHASES)
def test_per_output_losses_in_two_processes_equal_one_process(runs, phase):
    keras_matches_one_process(runs, phase)
    one = runs["one"]["patched"]["builtin"][phase]
    two = runs["two"]["patched"]["builtin"][phase]
    for key in ("loss", "a_loss", "b_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5)


@pytest.mark.parametrize("phase", PHASES)
def test_scalar_custom_loss_reports_its_one_process_value(runs, phase):
    keras_matches_one_process(runs, phase)
    one = runs["one"]["patched"]["scalar"][phase]
    two = runs["two"]["patched"]["scalar"][phase]
    for key in ("a_loss", "b_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5)

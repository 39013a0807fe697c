"""Data parallelism on many devices and hosts equals one device.

Each engine-specific check runs its worker processes only on the pass of
its backend (tf.distribute on TensorFlow, keras.distribution on JAX), as
`tests/models/dino_distribution_test.py` does; the other passes check the
backend-neutral behaviour instead. Every worker listens on 127.0.0.1 only,
on ports picked free at run time, and is killed after a time limit.

The run is `keras_dino.pretraining.pretrain` on a tiny ViT (hidden 16, one
block, out_dim 64) with SGD and per-variable clipping, so that a wrong loss
scale, a per-replica center or clipping before the all-reduce would all
change the weights. The reference is the same run on one device with the
global batch, computed in the test process.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from keras_dino.utils import distribution as distribution_lib

REPO = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
GLOBAL_BATCH, STEPS = 8, 3
TIMEOUT = 420  # seconds for all workers of a test

CONFIG = {
    "embed_dim": 16,
    "depth": 1,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "patch_size": 8,
    "image_size": 32,
    "local_crop_size": 16,
    "local_crops_number": 2,
    "out_dim": 64,
    "head_hidden_dim": 32,
    "head_bottleneck_dim": 16,
    "batch_size": GLOBAL_BATCH,
    "epochs": 2,
    "warmup_epochs": 0,
    "optimizer": "sgd",
    # Peak 0.25: SGD steps that move every weight visibly.
    "lr": 8.0,
    # At the first step 8 of the 25 gradients are below 1.0 (norms 0.03
    # to 0.8), so a wrong loss scale changes their updates, and the 17
    # others are clipped, so clipping before the all-reduce would too.
    "clip_grad": 1.0,
    "momentum_teacher": 0.9,
    "freeze_last_layer": 0,
    "seed": 0,
}

# Shared by the workers and the reference: the run's config and its input
# stream (global batches of fixed random crops, the same every epoch).
COMMON = r"""
import numpy as np

from keras_dino import configs
from keras_dino import pretraining


# The (num_shards, shard_index) of each epoch this process made.
SHARDS = []


def tiny_run(config_overrides, global_batch, steps):
    config = configs.get_config("cifar10_vit_tiny", **config_overrides)
    rng = np.random.default_rng(0)
    crops = tuple(
        rng.normal(size=(global_batch * steps, s, s, 3)).astype("float32")
        for s in (32, 32, 16, 16)
    )

    def make_epoch(seed, num_shards=None, shard_index=None):
        # Shardable, as the library's readers: a worker asked for shard i
        # of n gets runs i, i + n, ... of global_batch / n crops.
        import tensorflow as tf

        from keras_dino.data import pipeline

        SHARDS.append([num_shards, shard_index])
        dataset = tf.data.Dataset.from_tensor_slices(crops)
        batch = global_batch
        if num_shards is not None:
            batch = global_batch // num_shards
            dataset = pipeline.shard_batches(
                dataset, batch, num_shards, shard_index
            )
        return dataset.batch(batch, drop_remainder=True)

    return config, pretraining.EpochStream(make_epoch, seed=0)


def device_run(config_overrides, global_batch, folder):
    # The device augmentation's input: an image folder read with PIL,
    # crops made inside the step. Each call to `sharded` is recorded.
    config = configs.get_config(
        "cifar10_vit_tiny",
        **dict(config_overrides, augment_on="device", canvas_size=40),
    )
    stream, _ = pretraining.device_input(config, folder, workers=1)
    sharded = stream.reader.sharded

    def recorded(num_shards, shard_index):
        SHARDS.append([num_shards, shard_index])
        return sharded(num_shards, shard_index)

    stream.reader.sharded = recorded
    return config, stream


def weights_of(model):
    import keras

    return {
        w.path.split("/", 1)[-1]: np.asarray(keras.ops.convert_to_numpy(w))
        for w in model.weights
    }
"""

# One worker: argv = kind, output_dir, result file, process id, then
# kind-specific values. Only the audit hook's view of its writes and the
# final weights come back.
WORKER = r"""
import json
import os
import sys

kind, output_dir, result, index = sys.argv[1:5]
index = int(index)
output_dir = os.path.realpath(output_dir)
watched = os.path.join(output_dir, "")
if kind.startswith("jax"):
    # Less LLVM optimisation: the XLA compilations, most of these runs'
    # time, take half as long; every run of a test uses the same flags.
    os.environ["XLA_FLAGS"] = (
        "--xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true"
    )
if kind == "jax_devices":
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"

writes = []


def audit(event, args):
    # Files this process creates, changes, renames or removes in the run's
    # folder (a .keras file is written through Python's open).
    if event == "open" and args[0] is not None and not isinstance(
        args[0], int
    ):
        mode, flags = args[1], args[2]
        writing = (mode and any(c in mode for c in "wax+")) or (
            mode is None and flags & (os.O_WRONLY | os.O_RDWR)
        )
        path = os.fspath(args[0])
        if writing and os.path.realpath(path).startswith(watched):
            writes.append(path)
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.unlink"):
        path = os.fspath(args[0])
        if isinstance(path, str) and os.path.realpath(path).startswith(
            watched
        ):
            writes.append(f"{event} {path}")


sys.addaudithook(audit)

import numpy as np

from common import SHARDS, device_run, tiny_run, weights_of
from keras_dino import pretraining
from keras_dino.utils import distribution as distribution_lib

config_overrides = json.loads(os.environ["TINY_CONFIG"])
global_batch, steps = int(os.environ["GLOBAL_BATCH"]), int(os.environ["STEPS"])
stop_after = int(os.environ.get("STOP_AFTER", "0")) or None
die_at_epoch = int(os.environ.get("DIE_AT_EPOCH", "-1"))

if kind == "jax_devices":
    import keras

    distribution = keras.distribution.DataParallel()
else:  # TF_CONFIG or KERAS_DISTRIBUTION_* name the cluster.
    distribution = distribution_lib.make_distribution("auto")

import keras


class Die(keras.callbacks.Callback):
    # A worker that dies in the middle of an epoch (a lost host).
    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch == die_at_epoch and batch == 1:
            os._exit(17)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch




def run(distribution, output_dir, result, image_folder=None):
    if image_folder:
        config, stream = device_run(
            config_overrides, global_batch, image_folder
        )
    else:
        config, stream = tiny_run(config_overrides, global_batch, steps)
    model, history = pretraining.pretrain(
        config, stream, steps, output_dir, verbose=0,
        strategy=distribution, stop_after_epochs=stop_after,
        extra_callbacks=[Die()],
    )
    np.savez(result + ".npz", **{
        k.replace("/", "|"): v for k, v in weights_of(model).items()
    })
    initial = os.path.join(output_dir, "initial_backbone.keras")
    moved = None
    if os.path.exists(initial):
        initial = keras.saving.load_model(initial).get_weights()
        moved = sum(
            not np.allclose(keras.ops.convert_to_numpy(a), b)
            for a, b in zip(model.teacher_backbone.weights, initial)
        )
    with open(result, "w") as f:
        json.dump({
            "chief": distribution_lib.is_chief(distribution),
            "workers": distribution_lib.num_workers(distribution),
            "replicas": getattr(distribution, "num_replicas_in_sync", None),
            "loss": history.history["loss"] if history else None,
            "moved": moved,
            "writes": list(writes),
            "shards": sorted(set(map(tuple, SHARDS))),
        }, f)
    SHARDS.clear()


if kind == "jax_devices":
    # The one-device reference first, in the same process (it shares the
    # compiled initialisers), then the run on 2 devices.
    run(None, output_dir + "_reference", result + ".reference")
    writes.clear()
run(distribution, output_dir, result)
folder = os.environ.get("IMAGE_FOLDER")
if folder:
    # The same with the device augmentation and its image-folder reader.
    if kind == "jax_devices":
        run(None, output_dir + "_dreference", result + ".dreference", folder)
    run(distribution, output_dir + "_device", result + ".device", folder)
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _write_scripts(folder):
    (folder / "common.py").write_text(COMMON)
    (folder / "worker.py").write_text(WORKER)


def _start(folder, kind, output_dir, index, backend, extra_env=None):
    """Starts one worker; its output goes to a log file next to it."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(folder), str(REPO), env.get("PYTHONPATH", "")]
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["TINY_CONFIG"] = json.dumps(CONFIG)
    env["GLOBAL_BATCH"], env["STEPS"] = str(GLOBAL_BATCH), str(STEPS)
    for name in ("TF_CONFIG", "XLA_FLAGS") + (
        distribution_lib.JAX_CLUSTER_VARIABLES
    ):
        env.pop(name, None)
    env.update(extra_env or {})
    result = folder / f"{kind}_{index}_{time.monotonic_ns()}.json"
    log = open(folder / f"{result.stem}.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(folder / "worker.py"),
            kind,
            str(output_dir),
            str(result),
            str(index),
        ],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process.result, process.log_path = result, log.name
    return process


def _finish(process, deadline, suffix=""):
    """Waits for a worker; returns its result (suffix: another of its
    runs)."""
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = "timeout"
    log = Path(process.log_path).read_text()[-4000:]
    assert code == 0, f"worker exited with {code}:\n{log}"
    result = Path(str(process.result) + suffix)
    info = json.loads(result.read_text())
    with np.load(str(result) + ".npz") as weights:
        info["weights"] = {k.replace("|", "/"): weights[k] for k in weights}
    return info


def _reference(tmp_path, stop_after_epochs=None):
    """The one-device run in this process, with the global batch."""
    sys.path.insert(0, str(tmp_path))
    try:
        from common import tiny_run
        from common import weights_of
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("common", None)
    from keras_dino import pretraining

    config, stream = tiny_run(CONFIG, GLOBAL_BATCH, STEPS)
    model, history = pretraining.pretrain(
        config,
        stream,
        STEPS,
        str(tmp_path / "reference"),
        verbose=0,
        stop_after_epochs=stop_after_epochs,
    )
    initial = keras.saving.load_model(
        tmp_path / "reference" / "initial_backbone.keras"
    )
    moved = sum(
        not np.allclose(keras.ops.convert_to_numpy(a), b)
        for a, b in zip(model.teacher_backbone.weights, initial.get_weights())
    )
    return weights_of(model), history.history["loss"], moved


def _assert_same_run(reference, info):
    weights, losses = reference[:2]
    assert set(info["weights"]) == set(weights)
    diffs = {
        k: float(np.abs(info["weights"][k] - v).max())
        for k, v in weights.items()
    }
    bad = {k: v for k, v in diffs.items() if v > 1e-5}
    assert not bad, bad  # student, teacher, center and iteration
    assert "center" in diffs and "iteration" in diffs
    if info["loss"] is not None:
        np.testing.assert_allclose(
            info["loss"], losses[-len(info["loss"]) :], rtol=1e-5
        )


def _assert_only_chief_wrote(infos):
    chiefs = [i for i in infos if i["chief"]]
    assert len(chiefs) == 1, [i["chief"] for i in infos]
    assert any("checkpoint_" in w for w in chiefs[0]["writes"])
    for info in infos:
        if not info["chief"]:
            assert info["writes"] == [], info["writes"]


@pytest.mark.slow
def test_jax_data_parallel_devices_and_processes_equal_one_device(tmp_path):
    """JAX: DataParallel over 2 local devices, and over 2 processes of one
    device each (`keras.distribution.initialize` on 127.0.0.1), give the
    weights, teacher, center and losses of one device."""
    if BACKEND != "jax":
        # keras.distribution is JAX's; elsewhere nothing is rescaled or
        # refused silently: PyTorch and TensorFlow get a clear error.
        with pytest.raises(ValueError, match="jax"):
            distribution_lib.make_distribution("jax")
        assert distribution_lib.scale_loss_for_replicas(3.0) == 3.0
        return
    _write_scripts(tmp_path)
    deadline = time.monotonic() + TIMEOUT
    (port,) = _free_ports(1)
    cluster = {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
    }
    # STEPS global batches of small photos of different sizes.
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(GLOBAL_BATCH * STEPS):
        size = (32 + n % 9, 40 - n % 7)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{n:02d}.png")
    # All workers start at once; the first runs the one-device reference
    # and then the 2-device run, and both again with the device input.
    one_epoch = {"STOP_AFTER": "1", "IMAGE_FOLDER": str(folder)}
    local = _start(
        tmp_path, "jax_devices", tmp_path / "local", 0, "jax", one_epoch
    )
    processes = [
        _start(
            tmp_path,
            "jax_process",
            tmp_path / "multi",
            i,
            "jax",
            dict(cluster, KERAS_DISTRIBUTION_PROCESS_ID=str(i), **one_epoch),
        )
        for i in range(2)
    ]
    try:
        local_info = _finish(local, deadline)
        reference_info = _finish(local, deadline, ".reference")
        infos = [_finish(p, deadline) for p in processes]
        device_reference = _finish(local, deadline, ".dreference")
        device_infos = [_finish(p, deadline, ".device") for p in processes]
        device_infos.append(_finish(local, deadline, ".device"))
    finally:
        for p in [local] + processes:
            if p.poll() is None:
                p.kill()
    reference = (reference_info["weights"], reference_info["loss"])
    assert reference_info["workers"] == 1 and reference_info["chief"]
    assert local_info["workers"] == 1
    _assert_same_run(reference, local_info)
    assert [i["workers"] for i in infos] == [2, 2]
    for info in infos:
        _assert_same_run(reference, info)
    _assert_only_chief_wrote(infos)
    assert reference_info["moved"] >= 8  # The steps moved the weights.
    # One process feeds both local devices; each of 2 processes made
    # only its own half of every global batch.
    assert reference_info["shards"] == local_info["shards"] == [[None, None]]
    assert [i["shards"] for i in infos] == [[[2, 0]], [[2, 1]]]
    # The device augmentation: 2 processes (each reading its half of every
    # batch) and 2 local devices equal one device; the run trained.
    reference = (device_reference["weights"], device_reference["loss"])
    for info in device_infos:
        _assert_same_run(reference, info)
    assert [i["shards"] for i in device_infos] == [[[2, 0]], [[2, 1]], []]
    assert device_reference["moved"] >= 8


def _tf_config(ports, index):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}
    )


@pytest.mark.slow
def test_tensorflow_multi_worker_equals_one_worker_and_resumes(tmp_path):
    """TensorFlow: MultiWorkerMirroredStrategy with 2 workers on 127.0.0.1
    (TF_CONFIG). Worker 1 dies in epoch 2; both restart and resume from
    the chief's epoch-1 checkpoint; the run ends with the weights,
    teacher, center and losses of one worker with the global batch, and
    only the chief wrote to the run's folder."""
    if BACKEND != "tensorflow":
        # tf.distribute is TensorFlow's: other backends refuse it clearly.
        with pytest.raises(ValueError, match="tensorflow"):
            distribution_lib.make_distribution("multi_worker")
        return
    _write_scripts(tmp_path)
    deadline = time.monotonic() + TIMEOUT
    run_dir = tmp_path / "multi"

    def start_workers(extra=None):
        ports = _free_ports(2)
        return [
            _start(
                tmp_path,
                "tf_worker",
                run_dir,
                i,
                "tensorflow",
                dict((extra or {}).get(i, {}), TF_CONFIG=_tf_config(ports, i)),
            )
            for i in range(2)
        ]

    # Worker 1 dies at the second step of epoch 2 (index 1); the chief is
    # then stuck in a collective and is killed, as a scheduler would.
    first = start_workers({1: {"DIE_AT_EPOCH": "1"}})
    try:
        reference = _reference(tmp_path)
        code = first[1].wait(timeout=max(1.0, deadline - time.monotonic()))
        assert code == 17, Path(first[1].log_path).read_text()[-4000:]
    finally:
        for p in first:
            if p.poll() is None:
                p.kill()
                p.wait()
    record = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert record["epoch"] == 1
    second = start_workers()
    try:
        infos = [_finish(p, deadline) for p in second]
    finally:
        for p in second:
            if p.poll() is None:
                p.kill()
    for p in second:
        assert "Resuming from" in Path(p.log_path).read_text()
    assert [i["workers"] for i in infos] == [2, 2]
    assert [i["replicas"] for i in infos] == [2, 2]
    for info in infos:
        assert len(info["loss"]) == 1  # Epoch 2 only: it resumed.
        _assert_same_run(reference, info)
    # Each worker made only its own half of every global batch.
    assert sorted(i["shards"] for i in infos) == [[[2, 0]], [[2, 1]]]
    _assert_only_chief_wrote(infos)
    assert (run_dir / "teacher_backbone.keras").exists()
    assert reference[2] >= 8  # The steps did move the weights.


def test_distribution_names_and_impossible_combinations(monkeypatch):
    """Each backend refuses what its engine cannot do, naming the ones
    that can; `none` and `auto` on one device train without one."""
    for name in distribution_lib.JAX_CLUSTER_VARIABLES + ("TF_CONFIG",):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="Unknown distribution 'nccl'"):
        distribution_lib.make_distribution("nccl")
    assert distribution_lib.make_distribution("none") is None
    assert distribution_lib.is_chief(None)
    assert distribution_lib.num_workers(None) == 1
    assert distribution_lib.gather_from_workers(None, 7) == [7]
    logs = {"loss": keras.ops.convert_to_tensor(1.5)}
    assert distribution_lib.logs_for_replica_reduction(logs) is logs
    if BACKEND == "torch":
        for name in ("mirrored", "multi_worker", "jax"):
            with pytest.raises(ValueError, match="TensorFlow .* and JAX"):
                distribution_lib.make_distribution(name)
        # No GPU here: auto is one device.
        assert distribution_lib.make_distribution("auto") is None
    elif BACKEND == "tensorflow":
        with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
            distribution_lib.make_distribution("jax")
        with pytest.raises(ValueError, match="TF_CONFIG is not set"):
            distribution_lib.make_distribution("multi_worker")
        monkeypatch.setenv("TF_CONFIG", _tf_config([1, 2], 0))
        with pytest.raises(ValueError, match="only multi_worker uses"):
            distribution_lib.make_distribution("mirrored")
        monkeypatch.delenv("TF_CONFIG")
        assert distribution_lib.make_distribution("auto") is None
    else:
        with pytest.raises(ValueError, match="--distribution=jax"):
            distribution_lib.make_distribution("mirrored")
        monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
        with pytest.raises(ValueError, match="are not set"):
            distribution_lib.make_distribution("jax")
        monkeypatch.delenv("KERAS_DISTRIBUTION_NUM_PROCESSES")
        assert distribution_lib.make_distribution("auto") is None
        one_host = distribution_lib.make_distribution("jax")
        assert distribution_lib.is_keras_distribution(one_host)
        assert distribution_lib.is_chief(one_host)
        assert distribution_lib.num_workers(one_host) == 1


def test_pretrain_recipe_refuses_a_distribution_of_another_engine(tmp_path):
    """The recipe stops before any work, with the reason."""
    other = {"tensorflow": "jax", "jax": "mirrored", "torch": "multi_worker"}
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes" / "pretrain.py"),
            f"--distribution={other[BACKEND]}",
            f"--npz={tmp_path / 'never_read.npz'}",
            f"--output_dir={tmp_path / 'run'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"is not possible on the {BACKEND} backend" in done.stderr
    assert not (tmp_path / "run").exists()

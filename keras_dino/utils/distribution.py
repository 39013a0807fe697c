"""Distribution helpers that hide backend details from the models.

Data parallelism uses what each engine ships; keras_dino adds no transport
of its own:

* TensorFlow: `tf.distribute.MirroredStrategy` (the GPUs of one host) and
  `tf.distribute.MultiWorkerMirroredStrategy` (several hosts, from the
  `TF_CONFIG` environment variable). Each replica computes the loss of its
  part of the batch and the gradients are summed, so the DINO loss is
  divided by the number of replicas (`scale_loss_for_replicas`) and the
  center, a variable with `aggregation="mean"`, averages the replicas'
  updates.
* JAX: `keras.distribution.DataParallel` over all devices, of one process
  or of several (`keras.distribution.initialize`). The step is one SPMD
  program over the global batch: the loss, the batch center and the
  gradients are those of the global batch, and the per-variable gradient
  clipping comes after the all-reduce, as in the reference. Nothing is
  rescaled.
* PyTorch: Keras 3 has no multi-device `fit` for this backend
  (`keras.distribution` is not implemented for torch, and `fit` does not
  wrap the model in `DistributedDataParallel`), so training uses one
  device.
"""

import json
import os

import keras

DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker", "jax")

# The variables with which `keras.distribution.initialize` (JAX) reads the
# cluster when they are not passed to it.
JAX_CLUSTER_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def num_replicas_in_sync():
    """Replicas of the current `tf.distribute` strategy (1 elsewhere).

    Under JAX's `keras.distribution` the step is one program over the
    global batch, which counts as a single replica here.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss_for_replicas(loss):
    """Divides a per-replica loss by the number of replicas in sync.

    Under `tf.distribute` each replica's gradients are summed, so a loss
    averaged over the local batch must be divided by the replica count to
    give the gradient of the global-batch mean. Keras does this inside
    `keras.losses`; a hand-written loss must do it itself. Under JAX's
    `keras.distribution` the loss already is the global-batch mean and is
    left as it is.
    """
    replicas = num_replicas_in_sync()
    return loss / replicas if replicas > 1 else loss


def logs_for_replica_reduction(logs):
    """A training step's logs, shaped for Keras's multi-worker reduction.

    Under `MultiWorkerMirroredStrategy` with several workers, Keras 3
    reduces each log of a step with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on the scalar logs every model returns ("Invalid reduction
    dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388).
    Each log gets a leading axis of length 1, which that reduction turns
    back into the scalar mean over the replicas. Elsewhere `logs` are
    returned as they are.
    """
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    if num_workers(strategy) < 2:
        return logs
    return {key: tf.reshape(value, (1,)) for key, value in logs.items()}


def _tf_config_workers():
    """Number of tasks in the `TF_CONFIG` cluster (0 when it is unset)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a JSON object ({e}).") from e
    return sum(len(cluster.get(k, [])) for k in ("chief", "worker"))


def _jax_cluster_given():
    return any(os.environ.get(v) for v in JAX_CLUSTER_VARIABLES)


def _torch_gpus():
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _refuse(name, backend, why):
    raise ValueError(
        f"--distribution={name} is not possible on the {backend} backend: {why}"
    )


def make_distribution(name="auto"):
    """The data-parallel setting a training run asks for.

    Args:
        name: one of `DISTRIBUTIONS`:
            * `"none"`: one device, no distribution.
            * `"mirrored"` (TensorFlow): `MirroredStrategy` over the
              visible GPUs of this host.
            * `"multi_worker"` (TensorFlow): `MultiWorkerMirroredStrategy`
              over the hosts of the `TF_CONFIG` cluster.
            * `"jax"` (JAX): `keras.distribution.DataParallel` over all
              devices; with the `KERAS_DISTRIBUTION_*` variables set (see
              `keras.distribution.initialize`), over all processes'
              devices.
            * `"auto"`: what the backend and the visible devices allow:
              `multi_worker` when `TF_CONFIG` names several tasks,
              `mirrored` with several GPUs, `jax` with a JAX cluster or
              several JAX devices, else `none`. On PyTorch, `auto` with
              several GPUs is refused rather than using one of them.

    Returns:
        `None` (one device), a `tf.distribute.Strategy` or a
        `keras.distribution.Distribution`; `pretrain` takes any of them.

    Raises:
        ValueError: for an unknown name or a setting that the backend, the
            devices or the environment cannot give.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown distribution {name!r}; choose one of {DISTRIBUTIONS}."
        )
    backend = keras.backend.backend()
    if name == "none":
        return None
    if backend == "tensorflow":
        return _tensorflow_distribution(name)
    if backend == "jax":
        return _jax_distribution(name)
    engines = (
        "TensorFlow (mirrored, multi_worker) and JAX (jax) can; run with "
        "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax, or with "
        "--distribution=none on one device."
    )
    if backend == "torch":
        why = (
            "Keras 3 has no multi-device `fit` for PyTorch "
            "(keras.distribution is not implemented for torch and fit "
            "does not use DistributedDataParallel). " + engines
        )
        if name == "auto":
            gpus = _torch_gpus()
            if gpus > 1:
                _refuse(
                    name,
                    backend,
                    f"{gpus} GPUs are visible and training would silently "
                    "use one of them (set CUDA_VISIBLE_DEVICES to one GPU "
                    "to train on it). " + why,
                )
            return None
        _refuse(name, backend, why)
    if name == "auto":
        return None
    _refuse(name, backend, engines)


def _tensorflow_distribution(name):
    import tensorflow as tf

    if name == "jax":
        _refuse(
            name,
            "tensorflow",
            "it is keras.distribution on the JAX backend "
            "(KERAS_BACKEND=jax). On TensorFlow use mirrored (one host) "
            "or multi_worker (several hosts, TF_CONFIG).",
        )
    workers = _tf_config_workers()
    if name == "multi_worker" or (name == "auto" and workers > 1):
        if workers < 1:
            _refuse(
                name,
                "tensorflow",
                "TF_CONFIG is not set. Give each host TF_CONFIG='{\"cluster"
                '": {"worker": ["host0:port", "host1:port"]}, "task": {'
                '"type": "worker", "index": I}}\' (see the README, '
                '"Training on many devices / hosts").',
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        print(
            f"Training with MultiWorkerMirroredStrategy: "
            f"{strategy.num_replicas_in_sync} replicas on {workers} workers."
        )
        return strategy
    if workers > 1:
        _refuse(
            name,
            "tensorflow",
            f"TF_CONFIG names a cluster of {workers} tasks, which only "
            "multi_worker uses. Unset TF_CONFIG, or use "
            "--distribution=multi_worker.",
        )
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto" and len(gpus) < 2:
        return None
    strategy = tf.distribute.MirroredStrategy()
    print(
        f"Training with MirroredStrategy: {strategy.num_replicas_in_sync} "
        "replicas."
    )
    return strategy


def _jax_distribution(name):
    if name in ("mirrored", "multi_worker"):
        _refuse(
            name,
            "jax",
            "it is a tf.distribute strategy (KERAS_BACKEND=tensorflow). On "
            "JAX use --distribution=jax (one host, or several with the "
            "KERAS_DISTRIBUTION_* variables).",
        )
    import jax

    if _jax_cluster_given():
        missing = [v for v in JAX_CLUSTER_VARIABLES if not os.environ.get(v)]
        if missing:
            raise ValueError(
                f"A multi-process JAX run needs {JAX_CLUSTER_VARIABLES}; "
                f"{missing} are not set. See keras.distribution.initialize."
            )
        keras.distribution.initialize()
    elif name == "auto" and jax.device_count() < 2:
        return None
    distribution = keras.distribution.DataParallel()
    print(
        f"Training with keras.distribution.DataParallel over "
        f"{jax.device_count()} devices of {jax.process_count()} "
        "process(es)."
    )
    return distribution


def is_tf_strategy(distribution):
    """Whether `distribution` is a `tf.distribute.Strategy`."""
    if distribution is None or keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(distribution, tf.distribute.Strategy)


def is_keras_distribution(distribution):
    """Whether `distribution` is a `keras.distribution` setting (JAX)."""
    return isinstance(
        distribution,
        (keras.distribution.DataParallel, keras.distribution.ModelParallel),
    )


def is_chief(distribution=None):
    """Whether this worker writes the run's files (checkpoints, logs).

    True without a distribution and on one host; with several workers,
    only the chief (TensorFlow: the `chief` task, else worker 0; JAX:
    process 0).
    """
    if distribution is None:
        return True
    if is_tf_strategy(distribution):
        return bool(getattr(distribution.extended, "should_checkpoint", True))
    if is_keras_distribution(distribution):
        import jax

        return jax.process_index() == 0
    return True


def num_workers(distribution=None):
    """Processes taking part in the run (1 without a multi-host setting)."""
    if distribution is None:
        return 1
    if is_tf_strategy(distribution):
        resolver = getattr(distribution, "cluster_resolver", None)
        if resolver is None:
            return 1
        spec = resolver.cluster_spec().as_dict()
        return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))
    if is_keras_distribution(distribution):
        return distribution.num_processes
    return 1


def worker_index(distribution=None):
    """This worker's place in `[0, num_workers)`: the chief (or worker 0)
    is 0; TensorFlow's workers follow a `chief` task, if any; JAX: the
    process index."""
    if num_workers(distribution) == 1:
        return 0
    if is_tf_strategy(distribution):
        resolver = distribution.cluster_resolver
        if resolver.task_type == "chief":
            return 0
        chiefs = len(resolver.cluster_spec().as_dict().get("chief", []))
        return chiefs + int(resolver.task_id)
    import jax

    return jax.process_index()


def gather_from_workers(distribution, value):
    """Every worker's integer `value`, in worker order (a barrier too).

    Each worker must call it at the same point. Without several workers it
    returns `[value]`.
    """
    value = int(value)
    if num_workers(distribution) == 1:
        return [value]
    if is_tf_strategy(distribution):
        import tensorflow as tf

        index = worker_index(distribution)
        # Each of the worker's replicas adds its share of the worker's row.
        share = 1.0 / len(distribution.extended.worker_devices)
        row = tf.one_hot(index, num_workers(distribution), dtype=tf.float64)
        total = distribution.reduce(
            tf.distribute.ReduceOp.SUM,
            distribution.run(lambda: row * (value * share)),
            axis=None,
        )
        return [int(round(v)) for v in total.numpy().tolist()]
    import numpy as np
    from jax.experimental import multihost_utils

    values = multihost_utils.process_allgather(np.asarray(value, "int64"))
    return [int(v) for v in np.asarray(values).reshape(-1)]


__all__ = [
    "DISTRIBUTIONS",
    "gather_from_workers",
    "is_chief",
    "is_keras_distribution",
    "logs_for_replica_reduction",
    "make_distribution",
    "num_replicas_in_sync",
    "num_workers",
    "scale_loss_for_replicas",
    "worker_index",
]

"""Training-step throughput and peak memory: keras_dino vs the reference.

Each DINO step is the full step: student and teacher forwards, loss,
backward, per-parameter clipping, AdamW, last-layer freeze and teacher EMA.
Every (config, backend) runs in a fresh subprocess, so that peak memory
(`ru_maxrss`) is that of one run, and times its steps inside one `fit` (a
callback stamps each batch end; the first steps are warm-up), reporting
the median step and the spread.

`--compare_reference` adds a reference-style PyTorch step on the same
shapes: `tests/reference_torch.py`, the suite's independent plain-torch
rewrite of `main_dino.py` (its ViT with stochastic depth 0.1 in the
student, `DINOHead`, `DINOLoss`, `torch.optim.AdamW` with the reference's
parameter groups, `clip_gradients`, `cancel_gradients_last_layer` and the
per-parameter EMA loop). The reference and each backend run one after the
other, `--rounds` times over (interleaved), and the headline is the ratio
of images/s to the reference's in the same round (median over rounds, with
the min-max), so that a busy or slow period of the machine affects both
sides. The machine's float32 GEMM rate is printed with the absolute
figures.

Usage:
    python benchmarks/train_step.py --compare_reference \
        [--configs CFG-C,CFG-T,CFG-S] \
        [--backends jax,tensorflow,tensorflow+xla,torch] \
        [--rounds 3] [--steps 6] [--dtype_policy float32|mixed_bfloat16]
        [--jit_compile auto|true|false] [--input auto|pydataset|tf.data]
        [--allocator auto|keep|system] [--other_frameworks block|allow]

The Keras side gets the same batch at every step: through `tf.data` on
TensorFlow, and through a `keras.utils.PyDataset` on JAX and PyTorch, so
that no TensorFlow threads share the cores with their step (`--input`).

`--allocator` chooses glibc's malloc settings per side:
`keras_dino.utils.allocator.keep_freed_memory()` (freed memory kept for
reuse instead of unmapped) or the system's defaults. `auto` (the default,
as `recipes/pretrain.py` does) keeps freed memory on the PyTorch backend,
and for the reference-style step it is compared with (the same engine; it
was not faster for it), and leaves the defaults on JAX and TensorFlow.

`--other_frameworks block` (the default) runs each Keras backend as on a
machine where only that framework is installed: the child process makes
the other two frameworks' imports fail (`sys.modules[name] = None`).
Keras 3.15 otherwise imports JAX in every process where it is installed
(`keras/src/callbacks/orbax_checkpoint.py`) and TensorFlow whenever it
serialises a config (`serialize_keras_object` checks for
`tf.TensorShape`), which adds 0.1 GB and 0.45 GB of resident memory
(shared libraries and start-up allocations) to a PyTorch process that
uses neither; the reference's process imports PyTorch alone. `allow`
measures with whatever is installed importable. `tf.data` input keeps
TensorFlow importable. Besides the peak, each run reports the resident
memory just before its first step (`start GB`), so that the memory of the
step itself (peak minus start) can be compared apart from what the
imports cost.

`--dtype_policy mixed_bfloat16` computes the backbones in bfloat16 (heads,
loss and weights stay float32); the reference step stays float32, as the
reference trains on CPUs. The GFLOP/s column is then not comparable with
the float32 GEMM rate.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "CFG-C": dict(
        variant="ViT-T/16",
        patch_size=4,
        image_size=32,
        global_size=32,
        local_size=16,
        num_local=6,
        out_dim=4096,
        batch=64,
    ),
    "CFG-T": dict(
        variant="ViT-T/16",
        patch_size=16,
        image_size=224,
        global_size=224,
        local_size=96,
        num_local=6,
        out_dim=4096,
        batch=16,
    ),
    "CFG-S": dict(
        variant="ViT-S/16",
        patch_size=16,
        image_size=224,
        global_size=224,
        local_size=96,
        num_local=6,
        out_dim=65536,
        batch=8,
    ),
}
# (width, depth, heads) of the variants.
WIDTHS = {"ViT-T/16": (192, 12, 3), "ViT-S/16": (384, 12, 6)}
WARMUP_STEPS = 2


def vit_flops(dim, depth, tokens, patch_pixels):
    """Forward matmul FLOPs of one image through the ViT."""
    per_block = 24 * tokens * dim * dim + 4 * tokens * tokens * dim
    embed = 2 * (tokens - 1) * patch_pixels * dim
    return depth * per_block + embed


def step_flops_per_image(cfg):
    """Matmul FLOPs of one training step per image (fwd x3 for backward)."""
    dim, depth, _ = WIDTHS[cfg["variant"]]
    p = cfg["patch_size"]
    head = 2 * (dim * 2048 + 2048 * 2048 + 2048 * 256 + 256 * cfg["out_dim"])

    def crop(size):
        tokens = (size // p) ** 2 + 1
        return vit_flops(dim, depth, tokens, 3 * p * p) + head

    student = 2 * crop(cfg["global_size"]) + cfg["num_local"] * crop(
        cfg["local_size"]
    )
    teacher = 2 * crop(cfg["global_size"])
    return 3 * student + teacher


def gemm_rates():
    """GFLOP/s of a 2048^3 float32 matmul with numpy and torch."""
    import numpy as np

    n = 2048
    a = np.random.rand(n, n).astype("float32")
    b = np.random.rand(n, n).astype("float32")
    rates = {}

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 2 * n**3 / min(times) / 1e9

    rates["numpy"] = best(lambda: a @ b)
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rates["torch"] = best(lambda: ta @ tb)
    except ImportError:
        pass
    return rates


def _random_crops(cfg, channels_first=False):
    """The same random multi-crop batch for both sides (float32)."""
    import numpy as np

    rng = np.random.default_rng(0)
    b, g, loc = cfg["batch"], cfg["global_size"], cfg["local_size"]
    sizes = [g, g] + [loc] * cfg["num_local"]
    crops = [rng.standard_normal((b, s, s, 3), dtype="float32") for s in sizes]
    if channels_first:
        crops = [np.ascontiguousarray(c.transpose(0, 3, 1, 2)) for c in crops]
    return crops


def _peak_gb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _resident_gb():
    """The process's resident memory now, in GiB (Linux; else NaN)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _block_other_frameworks(side, input_pipeline):
    """Makes importing the frameworks that `side` does not use fail.

    As on a machine where only the side's framework is installed (see
    `--other_frameworks`); `tf.data` input keeps TensorFlow importable.
    """
    frameworks = {"tensorflow", "jax", "torch"}
    keep = {"reference": "torch"}.get(side, side)
    frameworks.discard(keep)
    if input_pipeline == "tf.data":
        frameworks.discard("tensorflow")
    for name in frameworks:
        if name not in sys.modules:
            sys.modules[name] = None


def _report(step_times, batch, start_gb):
    import numpy as np

    times = np.asarray(step_times)
    print(
        json.dumps(
            {
                "images_per_s": batch / float(np.median(times)),
                "step_s": float(np.median(times)),
                "step_min_s": float(times.min()),
                "step_max_s": float(times.max()),
                "peak_gb": _peak_gb(),
                "start_gb": start_gb,
            }
        )
    )


def _same_batch_dataset(crops, input_pipeline):
    """The same batch of crops at every step, as `fit` input.

    "pydataset" is a `keras.utils.PyDataset` read in the training thread:
    no TensorFlow is imported into a JAX or PyTorch process, whose idle
    tf.data and Eigen threads would otherwise spin on the same cores as
    the step. "tf.data" is `Dataset.from_tensors`. "auto": tf.data on the
    TensorFlow backend, else "pydataset".
    """
    import keras

    if input_pipeline == "auto":
        tf_backend = keras.backend.backend() == "tensorflow"
        input_pipeline = "tf.data" if tf_backend else "pydataset"
    if input_pipeline == "tf.data":
        import tensorflow as tf

        return tf.data.Dataset.from_tensors((crops,)).repeat()

    class SameBatch(keras.utils.PyDataset):
        def __len__(self):
            return 1_000_000

        def __getitem__(self, index):
            return (crops,)

    return SameBatch()


def seed_without_tensorflow(seed):
    """Seeds Python, NumPy and the backend, as `keras.utils.set_random_seed`
    does, without importing TensorFlow into a JAX or PyTorch process.

    `keras.utils.set_random_seed` imports TensorFlow whenever it is
    installed, to seed `tf.data`. The steps here read no `tf.data` on JAX
    and PyTorch, and the import alone added 0.45 GB to the peak resident
    memory of a PyTorch run (shared libraries and TensorFlow's start-up
    allocations), which the reference's process does not carry. Keras's
    initializers and seed generators without an explicit seed draw theirs
    from Python's `random`, so this fixes the initial weights all the same.
    """
    import random

    import keras
    import numpy as np

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def run_keras(
    name,
    steps,
    dtype_policy="float32",
    jit_compile="auto",
    input_pipeline="auto",
):
    """Runs in the subprocess: `steps` timed DINO steps inside one `fit`."""
    import keras
    import numpy as np

    import keras_dino

    cfg = CONFIGS[name]
    seed_without_tensorflow(0)
    backbone = keras_dino.models.ViTBackbone.from_variant(
        cfg["variant"],
        patch_size=cfg["patch_size"],
        image_size=cfg["image_size"],
        drop_path_rate=0.1,
        dtype=dtype_policy,
    )
    model = keras_dino.models.DINO(
        backbone, out_dim=cfg["out_dim"], dtype=dtype_policy
    )
    total = WARMUP_STEPS + steps
    model.compile(
        optimizer=keras_dino.optimizers.DINOAdamW(clip_norm=3.0),
        schedule=keras_dino.schedules.DINOSchedule.paper(
            cfg["batch"], steps_per_epoch=total, epochs=100
        ),
        jit_compile=_jit_value(jit_compile),
    )
    dataset = _same_batch_dataset(tuple(_random_crops(cfg)), input_pipeline)

    class BatchEndStamps(keras.callbacks.Callback):
        """Wall-clock time of every batch end inside one `fit`."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_begin(self, logs=None):
            self.start_gb = _resident_gb()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    stamps = BatchEndStamps()
    # One fit: the first steps compile and warm up; the steps after them
    # are timed between consecutive batch ends.
    model.fit(
        dataset,
        steps_per_epoch=total,
        epochs=1,
        verbose=0,
        callbacks=[stamps],
    )
    _report(
        np.diff(stamps.times[WARMUP_STEPS - 1 :]),
        cfg["batch"],
        stamps.start_gb,
    )


def _keep_freed_memory():
    """`keras_dino.utils.allocator.keep_freed_memory()`, loaded from its
    file: importing the package would import Keras (and its backends) into
    the reference's process and add to its peak memory."""
    import importlib.util

    path = os.path.join(
        os.path.dirname(HERE), "keras_dino", "utils", "allocator.py"
    )
    spec = importlib.util.spec_from_file_location("_allocator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.keep_freed_memory()


def _jit_value(flag):
    return {"auto": "auto", "true": True, "false": False}[flag]


def build_reference(name, total):
    """The reference-style plain-PyTorch DINO of config `name` and its
    NCHW crops; its schedules span `total` steps."""
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import reference_torch as ref

    cfg = CONFIGS[name]
    dim, depth, heads = WIDTHS[cfg["variant"]]
    arch = dict(
        img_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        out_dim=cfg["out_dim"],
        hidden_dim=2048,
        bottleneck_dim=256,
        nlayers=3,
    )
    lr = 5e-4 * cfg["batch"] / 256
    model = ref.ReferenceDINO(
        None,
        arch,
        ncrops=2 + cfg["num_local"],
        lr_schedule=ref.cosine_scheduler(lr, 1e-6, 100, total, 10),
        wd_schedule=ref.cosine_scheduler(0.04, 0.4, 100, total),
        momentum_schedule=ref.cosine_scheduler(0.996, 1.0, 100, total),
        teacher_temp_schedule=np.full(100, 0.04),
        clip_grad=3.0,
        freeze_last_layer=1,
        niter_per_ep=total,
        drop_path_rate=0.1,
    )
    crops = [
        torch.from_numpy(c) for c in _random_crops(cfg, channels_first=True)
    ]
    return model, crops


def run_reference(name, steps):
    """Runs in the subprocess: the reference-style plain-PyTorch step."""
    total = WARMUP_STEPS + steps
    model, crops = build_reference(name, total)
    start_gb = _resident_gb()
    times = []
    for _ in range(total):
        start = time.perf_counter()
        model.train_step(crops)
        times.append(time.perf_counter() - start)
    _report(times[WARMUP_STEPS:], CONFIGS[name]["batch"], start_gb)


def _child(name, side, steps, args):
    """One measurement in a fresh process; a result dict or an error.

    `side` is "reference", a Keras backend, or a backend with "+xla"
    (`jit_compile=True`, e.g. "tensorflow+xla").
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    backend, xla = side.removesuffix("+xla"), side.endswith("+xla")
    if backend != "reference":
        env["KERAS_BACKEND"] = backend
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--_child",
        name,
        "--_side",
        backend,
        "--steps",
        str(steps),
        "--dtype_policy",
        args.dtype_policy,
        "--jit_compile",
        "true" if xla else args.jit_compile,
        "--input",
        args.input,
        "--allocator",
        args.allocator,
        "--other_frameworks",
        args.other_frameworks,
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": tail or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def _ratio_cell(ratios):
    if not ratios:
        return "-"
    med = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--configs", default="CFG-C,CFG-T,CFG-S", help="Comma-separated."
    )
    parser.add_argument(
        "--backends",
        default="jax,tensorflow,torch",
        help="Comma-separated; a backend with +xla (e.g. tensorflow+xla) "
        "runs it with jit_compile=True.",
    )
    parser.add_argument(
        "--steps", type=int, default=6, help="Timed steps per run."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Interleaved repetitions of every (config, side) run.",
    )
    parser.add_argument(
        "--compare_reference",
        action="store_true",
        help="Also run the reference-style PyTorch step in every round.",
    )
    parser.add_argument(
        "--dtype_policy",
        default="float32",
        choices=["float32", "mixed_bfloat16"],
    )
    parser.add_argument(
        "--jit_compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="`jit_compile` for `DINO.compile` (auto: the model's default).",
    )
    parser.add_argument(
        "--input",
        default="auto",
        choices=["auto", "pydataset", "tf.data"],
        help="How `fit` gets its (fixed) batch; auto: tf.data on "
        "TensorFlow, a PyDataset (no TensorFlow imported) elsewhere.",
    )
    parser.add_argument(
        "--allocator",
        default="auto",
        choices=["auto", "keep", "system"],
        help="keep: every side runs with "
        "keras_dino.utils.allocator.keep_freed_memory(); system: glibc's "
        "defaults; auto (as recipes/pretrain.py): keep for the PyTorch "
        "backend and the reference-style step, system for the others.",
    )
    parser.add_argument(
        "--other_frameworks",
        default="block",
        choices=["block", "allow"],
        help="block: each side's process cannot import the frameworks it "
        "does not use (as where only its framework is installed); allow: "
        "whatever is installed can be imported (Keras imports JAX, and "
        "TensorFlow when it serialises a config).",
    )
    parser.add_argument(
        "--output", default=None, help="Optional JSON file for all results."
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        if args.other_frameworks == "block":
            pipeline = args.input
            if pipeline == "auto":
                tf_side = args._side == "tensorflow"
                pipeline = "tf.data" if tf_side else "pydataset"
            _block_other_frameworks(args._side, pipeline)
        keep = args.allocator == "keep" or (
            args.allocator == "auto" and args._side in ("torch", "reference")
        )
        if keep:
            _keep_freed_memory()
        if args._side == "reference":
            run_reference(args._child, args.steps)
        else:
            run_keras(
                args._child,
                args.steps,
                args.dtype_policy,
                args.jit_compile,
                args.input,
            )
        return
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {sorted(CONFIGS)}")
    sides = args.backends.split(",")
    if args.compare_reference:
        sides = ["reference"] + sides
    rates = gemm_rates()
    print(
        "Machine GEMM rate (2048^3 fp32) before: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()),
        flush=True,
    )
    results = {(c, side): [] for c in configs for side in sides}
    for round_index in range(args.rounds):
        for name in configs:
            for side in sides:
                res = _child(name, side, args.steps, args)
                res["round"] = round_index
                results[(name, side)].append(res)
                shown = res.get("images_per_s", res.get("error"))
                print(f"  round {round_index} {name} {side}: {shown}")
                sys.stdout.flush()
    after = gemm_rates()
    print(
        "Machine GEMM rate after: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in after.items())
    )
    print(
        "| config | side | img/s | vs reference (min-max) | step s min-max "
        "| peak GB | start GB | GFLOP/s | % of numpy GEMM |"
    )
    print("|" + "---|" * 9)
    nan = float("nan")
    for name in configs:
        flops = step_flops_per_image(CONFIGS[name])
        reference = results.get((name, "reference"), [])
        for side in sides:
            runs = [r for r in results[(name, side)] if "error" not in r]
            if not runs:
                error = results[(name, side)][0]["error"]
                print(f"| {name} | {side} | failed: {error} |")
                continue
            ips = statistics.median(r["images_per_s"] for r in runs)
            ratios = [
                r["images_per_s"] / ref["images_per_s"]
                for r, ref in zip(results[(name, side)], reference)
                if "error" not in r and "error" not in ref
            ]
            gflops = flops * ips / 1e9
            print(
                f"| {name} | {side} | {ips:.2f} | "
                f"{_ratio_cell(ratios) if side != 'reference' else '1'} | "
                f"{min(r['step_min_s'] for r in runs):.2f}-"
                f"{max(r['step_max_s'] for r in runs):.2f} | "
                f"{max(r['peak_gb'] for r in runs):.2f} | "
                f"{max(r.get('start_gb', nan) for r in runs):.2f} | "
                f"{gflops:.0f} | "
                f"{100 * gflops / rates['numpy']:.0f}% |"
            )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {
                    "gemm_before": rates,
                    "gemm_after": after,
                    "dtype_policy": args.dtype_policy,
                    "results": {
                        f"{c}/{side}": v for (c, side), v in results.items()
                    },
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()

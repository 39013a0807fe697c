"""Training-step throughput and peak memory of DINO on each Keras backend.

Runs each (backend, config) in a fresh subprocess so that peak memory
(`ru_maxrss`) is that of one run, and prints one table: images per second
(median of the timed steps after warm-up), peak resident memory, the matmul
GFLOP/s achieved (analytic matmul FLOPs of one step per image x images/s)
and the machine's single-precision GEMM rate measured here with numpy and
torch.

Reference PyTorch DINO on the same 2-core machine (its full step: both
forwards, loss, backward, clipping, AdamW, EMA; images/s, peak GB):
CFG-C 12 / 3.5, CFG-T 4.0 / 2.8, CFG-S 1.2 / 3.6.

Usage:
    python benchmarks/train_step.py [--configs CFG-C,CFG-T,CFG-S]
        [--backends jax,tensorflow,torch] [--steps 6]
        [--dtype_policy float32|mixed_bfloat16]

`--dtype_policy mixed_bfloat16` computes the backbones in bfloat16 (heads,
loss and weights stay float32), which uses the AMX / AVX-512 BF16 units of
CPUs that have them. The GFLOP/s column is then not comparable with the
float32 GEMM rate.
"""

import argparse
import json
import os
import subprocess
import sys
import time

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
REFERENCE = {"CFG-C": (12.0, 3.5), "CFG-T": (4.0, 2.8), "CFG-S": (1.2, 3.6)}
WIDTHS = {"ViT-T/16": (192, 12), "ViT-S/16": (384, 12)}


def vit_flops(dim, depth, tokens, patch_pixels):
    """Forward matmul FLOPs of one image through the ViT."""
    per_block = 24 * tokens * dim * dim + 4 * tokens * tokens * dim
    embed = 2 * (tokens - 1) * patch_pixels * dim
    return depth * per_block + embed


def step_flops_per_image(cfg):
    """Matmul FLOPs of one training step per image (fwd x3 for backward)."""
    dim, depth = WIDTHS[cfg["variant"]]
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


def run_one(name, steps, dtype_policy="float32"):
    """Runs in the subprocess: time `steps` DINO steps with `fit`."""
    import resource

    import keras
    import numpy as np

    import keras_dino

    cfg = CONFIGS[name]
    keras.utils.set_random_seed(0)
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
    warmup = 2
    model.compile(
        optimizer=keras_dino.optimizers.DINOAdamW(),
        schedule=keras_dino.schedules.DINOSchedule.paper(
            cfg["batch"], steps_per_epoch=warmup + steps, epochs=100
        ),
    )
    rng = np.random.default_rng(0)
    b, g, loc = cfg["batch"], cfg["global_size"], cfg["local_size"]
    crops = tuple(
        rng.standard_normal((b, g, g, 3), dtype="float32") for _ in range(2)
    ) + tuple(
        rng.standard_normal((b, loc, loc, 3), dtype="float32")
        for _ in range(cfg["num_local"])
    )

    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensors((crops,)).repeat()

    class BatchEndStamps(keras.callbacks.Callback):
        """Wall-clock time of every batch end inside one `fit`."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    stamps = BatchEndStamps()
    # One fit: the first `warmup` steps compile and warm up; the steps
    # after them are timed between consecutive batch ends.
    model.fit(
        dataset,
        steps_per_epoch=warmup + steps,
        epochs=1,
        verbose=0,
        callbacks=[stamps],
    )
    times = list(np.diff(stamps.times[warmup - 1 :]))
    step = float(np.median(times))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        json.dumps({"images_per_s": b / step, "step_s": step, "peak_gb": peak})
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="CFG-C,CFG-T,CFG-S")
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--dtype_policy",
        default="float32",
        choices=["float32", "mixed_bfloat16"],
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        run_one(args._child, args.steps, args.dtype_policy)
        return
    rates = gemm_rates()
    print(
        "Machine GEMM rate (2048^3 fp32): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
    )
    header = (
        "| config | backend | img/s | vs ref | peak GB (ref) | "
        "GFLOP/s | % of numpy GEMM |"
    )
    print(header)
    print("|" + "---|" * 7)
    for name in args.configs.split(","):
        flops = step_flops_per_image(CONFIGS[name])
        ref_ips, ref_gb = REFERENCE[name]
        for backend in args.backends.split(","):
            env = dict(os.environ, KERAS_BACKEND=backend)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_child",
                    name,
                    "--steps",
                    str(args.steps),
                    "--dtype_policy",
                    args.dtype_policy,
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            lines = [
                line
                for line in proc.stdout.splitlines()
                if line.startswith("{")
            ]
            if proc.returncode or not lines:
                tail = proc.stderr.strip().splitlines()[-3:]
                print(f"| {name} | {backend} | failed: {' '.join(tail)} |")
                continue
            res = json.loads(lines[-1])
            ips = res["images_per_s"]
            gflops = flops * ips / 1e9
            print(
                f"| {name} | {backend} | {ips:.2f} | {ips / ref_ips:.2f}x "
                f"| {res['peak_gb']:.2f} ({ref_gb}) | {gflops:.0f} | "
                f"{100 * gflops / rates['numpy']:.0f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()

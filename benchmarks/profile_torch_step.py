"""Where the time of a PyTorch DINO step goes: keras_dino vs reference-style.

Profiles `--steps` training steps (after warm-up) of the configurations of
`benchmarks/train_step.py` with `torch.profiler`, on the Keras PyTorch
backend (inside one `fit`) and on the reference-style plain-PyTorch step
(`tests/reference_torch.py`), and prints for each: the wall time per step,
the number of aten operator calls per step (a measure of per-op dispatch
overhead), and the operators with the largest self CPU time.

Usage:
    python benchmarks/profile_torch_step.py [--config CFG-C] [--steps 3]
        [--rows 15]
"""

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step as bench  # noqa: E402


def _summary(prof, steps, seconds, rows):
    events = prof.key_averages()
    aten = [e for e in events if e.key.startswith("aten::")]
    calls = sum(e.count for e in aten)
    self_ms = sum(e.self_cpu_time_total for e in aten) / 1e3
    print(f"  wall {seconds / steps:.3f} s/step")
    print(
        f"  aten calls/step {calls / steps:,.0f}; aten self time/step "
        f"{self_ms / steps:,.0f} ms"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))


def profile_keras(name, steps, rows):
    import keras
    import numpy as np
    import torch

    import keras_dino

    cfg = bench.CONFIGS[name]
    bench.seed_without_tensorflow(0)
    backbone = keras_dino.models.ViTBackbone.from_variant(
        cfg["variant"],
        patch_size=cfg["patch_size"],
        image_size=cfg["image_size"],
        drop_path_rate=0.1,
    )
    model = keras_dino.models.DINO(backbone, out_dim=cfg["out_dim"])
    total = bench.WARMUP_STEPS + steps
    model.compile(
        optimizer=keras_dino.optimizers.DINOAdamW(clip_norm=3.0),
        schedule=keras_dino.schedules.DINOSchedule.paper(
            cfg["batch"], steps_per_epoch=total, epochs=100
        ),
    )
    # The same batch `total` times over: one batch per step.
    crops = [np.concatenate([c] * total) for c in bench._random_crops(cfg)]

    class Profile(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == bench.WARMUP_STEPS:
                self.prof = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]
                )
                self.prof.__enter__()
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch == total - 1:
                self.seconds = time.perf_counter() - self.start
                self.prof.__exit__(None, None, None)

    callback = Profile()
    model.fit(
        crops,
        batch_size=cfg["batch"],
        steps_per_epoch=total,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[callback],
    )
    print(f"== keras_dino (torch backend), {name}")
    _summary(callback.prof, steps, callback.seconds, rows)


def profile_reference(name, steps, rows):
    import torch

    model, crops = bench.build_reference(name, bench.WARMUP_STEPS + steps)
    for _ in range(bench.WARMUP_STEPS):
        model.train_step(crops)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            model.train_step(crops)
        seconds = time.perf_counter() - start
    print(f"== reference-style plain PyTorch, {name}")
    _summary(prof, steps, seconds, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="CFG-C")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument(
        "--side", choices=["both", "keras", "reference"], default="both"
    )
    args = parser.parse_args()
    if args.side in ("both", "reference"):
        profile_reference(args.config, args.steps, args.rows)
    if args.side in ("both", "keras"):
        profile_keras(args.config, args.steps, args.rows)


if __name__ == "__main__":
    main()

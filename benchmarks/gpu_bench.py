"""The DINO step and the device augmentation on one GPU, JAX and PyTorch.

Measures, per backend (JAX, PyTorch) and mixed precision (bfloat16,
float16): images/s of the ViT-S/16 DINO training step (2 x 224 + 10 x 96
crops, out_dim 65,536, `DINOAdamW`, `model.fit`) and the peak device
memory; and, per backend, the images/s of `DeviceMultiCropAugmentation`
(2 x 224 + 10 x 96 crops from 512 px uint8 images). Writes `gpu.json` and
`gpu.md` (a markdown table) to `--output_dir`. TensorFlow is not needed.

Each measurement runs in its own subprocess (a fresh backend, its own peak
memory); the whole run stops by itself within `--time_limit` seconds (jobs
that no longer fit are reported as not run).

    bash benchmarks/gpu.sh                      # the full run, <= 8 min
    python benchmarks/gpu_bench.py --smoke      # tiny, on the CPU, seconds
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

_SMOKE = flags.DEFINE_bool(
    "smoke",
    False,
    "Tiny config on the CPU (a test of this script): ViT with 16 hidden "
    "units, 2 x 32 + 2 x 16 crops, out_dim 64, 2 steps.",
)
_BACKENDS = flags.DEFINE_list(
    "backends", ["jax", "torch"], "Keras backends to measure."
)
_DTYPES = flags.DEFINE_list(
    "dtypes",
    ["mixed_bfloat16", "mixed_float16"],
    "Dtype policies of the DINO step.",
)
_BATCH = flags.DEFINE_integer(
    "batch_size", 64, "Images per step (the paper: 64 per GPU)."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (compilation).")
_TIME_LIMIT = flags.DEFINE_float(
    "time_limit", 470.0, "Seconds for the whole run, all jobs together."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", os.path.join(REPO, "runs", "gpu_bench"), "Output folder."
)
_JOB = flags.DEFINE_string(
    "job", None, "Internal: run one job (JSON) in this process."
)

FULL = dict(
    variant="ViT-S/16",
    global_size=224,
    local_size=96,
    num_local=10,
    out_dim=65536,
    canvas=512,
)
SMOKE = dict(
    variant=None,
    global_size=32,
    local_size=16,
    num_local=2,
    out_dim=64,
    canvas=40,
)


# --- one job, in a subprocess ----------------------------------------------


def _peak_memory_gib(backend):
    """Peak device memory of this process, GiB (`None` on a CPU)."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**30
        return None
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**30
    return None


def _device_name(backend):
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        return "cpu"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return getattr(device, "device_kind", device.platform)
    return "cpu"


def run_step(cfg, dtype, batch, steps, warmup):
    """Times `steps` DINO steps inside one `fit`: img/s, ms/step, memory."""
    import keras
    import numpy as np

    import keras_dino

    keras.utils.set_random_seed(0)
    if cfg["variant"]:
        backbone = keras_dino.models.ViTBackbone.from_variant(
            cfg["variant"],
            image_size=cfg["global_size"],
            drop_path_rate=0.1,
            dtype=dtype,
        )
        head = {}
    else:
        backbone = keras_dino.models.ViTBackbone(
            image_size=cfg["global_size"],
            patch_size=8,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            dtype=dtype,
        )
        head = dict(hidden_dim=16, bottleneck_dim=8)
    model = keras_dino.models.DINO(
        backbone, out_dim=cfg["out_dim"], dtype=dtype, **head
    )
    total = warmup + steps
    model.compile(
        optimizer=keras_dino.optimizers.DINOAdamW(clip_norm=3.0),
        schedule=keras_dino.schedules.DINOSchedule.paper(
            batch, steps_per_epoch=total, epochs=100
        ),
    )
    rng = np.random.default_rng(0)
    sizes = (cfg["global_size"],) * 2 + (cfg["local_size"],) * cfg["num_local"]
    crops = tuple(
        rng.standard_normal((batch, s, s, 3), dtype=np.float32) for s in sizes
    )

    class SameBatch(keras.utils.PyDataset):
        def __len__(self):
            return total

        def __getitem__(self, index):
            return (crops,)

    class Stamps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, step, logs=None):
            float(logs["loss"])  # waits for the step (as `loss.item()`)
            self.times.append(time.perf_counter())

    stamps = Stamps()
    model.fit(SameBatch(), epochs=1, verbose=0, callbacks=[stamps])
    seconds = stamps.times[-1] - stamps.times[warmup - 1]
    return {
        "images_per_s": steps * batch / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "peak_memory_gib": _peak_memory_gib(keras.backend.backend()),
    }


def run_augmentation(cfg, batch, repeats):
    """Images/s of `DeviceMultiCropAugmentation` on the default device."""
    sys.path.insert(0, HERE)
    from device_augment import synthetic_batches
    from device_augment import time_device_augmentation

    from keras_dino.layers import DeviceMultiCropAugmentation
    from keras_dino.numpy_data import MultiCropSampler

    sampler = MultiCropSampler(
        global_crop_size=cfg["global_size"],
        local_crop_size=cfg["local_size"],
        num_local_crops=cfg["num_local"],
        seed=0,
    )
    batches = synthetic_batches(sampler, batch, cfg["canvas"], count=2)
    layer = DeviceMultiCropAugmentation.from_sampler(sampler)
    result = time_device_augmentation(layer, batches, repeats=repeats)
    return {"images_per_s": result["img_per_s"]}


def run_job(job):
    """Runs the jobs of one process; prints one JSON line per result."""
    import keras

    backend = keras.backend.backend()
    cfg = SMOKE if job["smoke"] else FULL
    for task in job["tasks"]:
        result = {"backend": backend, **task}
        try:
            if task["kind"] == "step":
                result.update(
                    run_step(
                        cfg,
                        task["dtype"],
                        job["batch"],
                        job["steps"],
                        job["warmup"],
                    )
                )
            else:
                result.update(run_augmentation(cfg, job["batch"], 3))
        except Exception as e:  # reported in the table, never hidden
            result["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        result["device"] = _device_name(backend)
        print("RESULT " + json.dumps(result), flush=True)


# --- the orchestrator ------------------------------------------------------


def _versions(backend):
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for p in ('keras', 'jax', 'jaxlib', 'torch', 'numpy'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {}


def _gpu_name():
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        lines = proc.stdout.strip().splitlines()
        return lines[1].strip() if len(lines) > 1 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _plan():
    """Processes to run: `(backend, [tasks])`.

    On a GPU one process per measurement (JAX's peak memory cannot be
    reset); with --smoke one process per backend.
    """
    plan = []
    for backend in _BACKENDS.value:
        steps = [{"kind": "step", "dtype": d} for d in _DTYPES.value]
        augment = [{"kind": "augmentation"}]
        if _SMOKE.value:
            plan.append((backend, augment + steps))
        else:
            plan.append((backend, augment))
            plan.extend((backend, [step]) for step in steps)
    return plan


def _run_process(backend, tasks, timeout):
    job = {
        "smoke": _SMOKE.value,
        "batch": 2 if _SMOKE.value else _BATCH.value,
        "steps": 2 if _SMOKE.value else _STEPS.value,
        "warmup": 1 if _SMOKE.value else _WARMUP.value,
        "tasks": tasks,
    }
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO, env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _SMOKE.value:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    else:
        # Let JAX allocate as it goes, so its peak is what the step needs.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--job={json.dumps(job)}",
    ]
    results, error = [], None
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout
        )
        output = proc.stdout
        if proc.returncode != 0:
            error = f"exit {proc.returncode}: {proc.stderr[-500:]}"
    except subprocess.TimeoutExpired as e:
        output = e.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        error = f"stopped after {timeout:.0f} s (time limit)"
    for line in output.splitlines():
        if line.startswith("RESULT "):
            results.append(json.loads(line[len("RESULT ") :]))
    done = {json.dumps(r.get("dtype")) + r["kind"] for r in results}
    for task in tasks:
        if json.dumps(task.get("dtype")) + task["kind"] not in done:
            results.append(
                {"backend": backend, **task, "error": error or "no result"}
            )
    return results


def _number(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}"


def markdown(report):
    """The markdown table of a report."""
    cfg = report["config"]
    lines = [
        f"DINO step, {report['config_name']}: {cfg['crops']}, out_dim "
        f"{cfg['out_dim']}, batch {report['batch_size']}; "
        f"{report['date']}, {report['gpu'] or 'no GPU'}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(report["versions"].items())),
        "",
        "| backend | what | dtype | images/s | ms/step | peak memory GiB "
        "| device | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        what = "DINO step" if r["kind"] == "step" else "device augmentation"
        lines.append(
            f"| {r['backend']} | {what} | {r.get('dtype', 'float32')} | "
            f"{_number(r.get('images_per_s'))} | "
            f"{_number(r.get('ms_per_step'))} | "
            f"{_number(r.get('peak_memory_gib'), 2)} | "
            f"{r.get('device', '')} | {r.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if _JOB.value:
        run_job(json.loads(_JOB.value))
        return
    start = time.monotonic()
    cfg = SMOKE if _SMOKE.value else FULL
    results = []
    plan = _plan()
    for i, (backend, tasks) in enumerate(plan):
        left = _TIME_LIMIT.value - (time.monotonic() - start)
        if left < 20:
            results.extend(
                {"backend": backend, **t, "error": "not run: time limit"}
                for t in tasks
            )
            continue
        # Share what is left among the processes still to run, at most
        # doubling one's share when the earlier ones finished early.
        share = min(left, 2 * left / (len(plan) - i))
        results.extend(_run_process(backend, tasks, share))
        print(f"[{time.monotonic() - start:.0f} s] {backend}: {tasks}")
    sizes = (
        f"2 x {cfg['global_size']} + {cfg['num_local']} x {cfg['local_size']}"
    )
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "gpu": _gpu_name(),
        "host": platform.node(),
        "versions": _versions(None),
        "config_name": "smoke" if _SMOKE.value else cfg["variant"],
        "config": {**cfg, "crops": sizes},
        "batch_size": 2 if _SMOKE.value else _BATCH.value,
        "seconds": time.monotonic() - start,
        "results": results,
    }
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    json_path = os.path.join(_OUTPUT_DIR.value, "gpu.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.join(_OUTPUT_DIR.value, "gpu.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"Wrote {json_path} and gpu.md in {report['seconds']:.0f} s.")


if __name__ == "__main__":
    app.run(main)

"""Pretraining library and recipe: end to end, checkpoints and resume."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_dino import configs
from keras_dino import pretraining
from keras_dino.callbacks import NonFiniteLossError
from keras_dino.checkpointing import latest_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

TINY = {
    "arch": "vit_tiny",
    "depth": 1,
    "patch_size": 8,
    "out_dim": 32,
    "head_hidden_dim": 16,
    "head_bottleneck_dim": 8,
    "batch_size": 8,
    "epochs": 3,
    "warmup_epochs": 1,
    "warmup_teacher_temp_epochs": 2,
    "teacher_temp": 0.06,
    "local_crops_number": 2,
}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory, cifar_sample):
    """24 real CIFAR-10 images of the repository's sample (conftest.py)."""
    path = tmp_path_factory.mktemp("pretrain") / "tiny.npz"
    images, labels, _ = cifar_sample
    np.savez(path, images=images[:24], labels=labels[:24])
    return str(path)


def _history(output_dir):
    with open(os.path.join(output_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _run(config, npz, output_dir, stop_after=None):
    augmentation = pretraining.multi_crop_augmentation(config)
    dataset, num_images = pretraining.pretraining_dataset(
        augmentation, config["batch_size"], npz_paths=npz, seed=0
    )
    steps = pretraining.steps_for(num_images, config["batch_size"])
    return pretraining.pretrain(
        config,
        dataset,
        steps,
        str(output_dir),
        verbose=0,
        stop_after_epochs=stop_after,
    )


@pytest.mark.slow
def test_resume_after_interruption_keeps_the_schedules(tiny_npz, tmp_path):
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    _run(config, tiny_npz, tmp_path / "straight")
    straight = _history(tmp_path / "straight")
    assert len(straight) == 3
    # Complete checkpoints only, the two most recent kept.
    assert sorted(os.listdir(tmp_path / "straight" / "checkpoints")) == [
        "checkpoint_0002.keras",
        "checkpoint_0003.keras",
        "latest.json",
    ]

    _, first = _run(config, tiny_npz, tmp_path / "resumed", stop_after=2)
    assert len(first.history["loss"]) == 2
    path, done = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert done == 2 and path.endswith("checkpoint_0002.keras")
    assert not (tmp_path / "resumed" / "teacher_backbone.keras").exists()
    model, second = _run(config, tiny_npz, tmp_path / "resumed")
    assert len(second.history["loss"]) == 1
    resumed = _history(tmp_path / "resumed")
    assert [row["epoch"] for row in resumed] == ["0", "1", "2"]
    for key in (
        "learning_rate",
        "weight_decay",
        "teacher_momentum",
        "teacher_temperature",
    ):
        for a, b in zip(straight, resumed):
            np.testing.assert_allclose(
                float(a[key]), float(b[key]), rtol=1e-6, err_msg=key
            )
    # Epoch 3 resumes at iteration 2 * steps of the same optimizer.
    assert int(model.optimizer.iterations) == 3 * 3
    # The temperature warm-up (0.04 -> 0.06 over 2 epochs) crossed the
    # interruption with the right values.
    temps = [float(row["teacher_temperature"]) for row in resumed]
    np.testing.assert_allclose(temps, [0.04, 0.06, 0.06], rtol=1e-6)
    # The input stream resumed at epoch 3 too: the same losses and the same
    # final teacher as the uninterrupted run.
    np.testing.assert_allclose(
        [float(row["loss"]) for row in resumed],
        [float(row["loss"]) for row in straight],
        rtol=1e-5,
    )
    teachers = [
        keras.saving.load_model(
            tmp_path / name / "teacher_backbone.keras"
        ).get_weights()
        for name in ("straight", "resumed")
    ]
    for a, b in zip(*teachers):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert (tmp_path / "resumed" / "teacher_backbone.keras").exists()
    assert (tmp_path / "resumed" / "initial_backbone.keras").exists()
    # The configuration's seed fixes the initial weights.
    initial = [
        keras.saving.load_model(
            tmp_path / name / "initial_backbone.keras"
        ).get_weights()
        for name in ("straight", "resumed")
    ]
    for a, b in zip(*initial):
        np.testing.assert_array_equal(a, b)


def test_resume_with_changed_values_is_refused(tiny_npz, tmp_path):
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    _run(config, tiny_npz, tmp_path, stop_after=1)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["epochs"] == 3 and stored["steps_per_epoch"] == 3
    longer = dict(config, epochs=6, lr=0.01)
    with pytest.raises(ValueError) as error:
        _run(longer, tiny_npz, tmp_path)
    message = str(error.value)
    assert "epochs: 3 -> 6" in message and "lr: 0.004 -> 0.01" in message
    assert "new --output_dir" in message
    # Nothing was trained or written by the refused call.
    assert latest_checkpoint(tmp_path / "checkpoints")[1] == 1
    assert len(_history(tmp_path)) == 1


@pytest.mark.slow
def test_no_checkpoint_after_a_non_finite_step(tiny_npz, tmp_path):
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    augmentation = pretraining.multi_crop_augmentation(config)
    stream, num_images = pretraining.pretraining_dataset(
        augmentation, config["batch_size"], npz_paths=tiny_npz, seed=0
    )
    steps = pretraining.steps_for(num_images, config["batch_size"])
    clean = stream.dataset(steps)
    # Epoch 1 is clean; from epoch 2 on the global crops hold a NaN.
    poisoned = clean.take(steps).concatenate(
        clean.skip(steps).map(
            lambda *crops: (crops[0] * float("nan"),) + tuple(crops[1:])
        )
    )
    with pytest.raises(NonFiniteLossError):
        pretraining.pretrain(config, poisoned, steps, str(tmp_path), verbose=0)
    path, done = latest_checkpoint(tmp_path / "checkpoints")
    assert done == 1
    weights = keras.saving.load_model(path).get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    # The run resumes from that checkpoint and finishes.
    model, history = pretraining.pretrain(
        config, stream, steps, str(tmp_path), verbose=0
    )
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(model.iteration) == 3 * steps


def test_a_finite_loss_with_a_non_finite_update_saves_nothing(
    tiny_npz, tmp_path
):
    # The case: --lr=1e40 --warmup_epochs=0 overflows the weights
    # at the first update while that step's loss is finite.
    config = configs.get_config(
        "cifar10_vit_tiny", **dict(TINY, lr=1e40, warmup_epochs=0)
    )
    with pytest.raises(NonFiniteLossError, match="weights became"):
        _run(config, tiny_npz, tmp_path)
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def test_build_optimizer_names():
    from keras_dino import optimizers

    config = configs.get_config("cifar10_vit_tiny", clip_grad=0.0)
    kinds = {
        "adamw": optimizers.DINOAdamW,
        "sgd": optimizers.DINOSGD,
        "lars": optimizers.LARS,
    }
    for name, cls in kinds.items():
        optimizer = pretraining.build_optimizer(dict(config, optimizer=name))
        assert type(optimizer) is cls and optimizer.clip_norm is None
    with pytest.raises(ValueError, match="adamw"):
        pretraining.build_optimizer(dict(config, optimizer="adam"))
    resnet = pretraining.build_backbone(configs.get_config("imagenet_resnet50"))
    assert resnet.output_shape == (None, 2048)


def test_unknown_configuration_and_keys_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown configuration"):
        configs.get_config("imagenet_vitz")
    with pytest.raises(ValueError, match="Unknown configuration keys"):
        configs.get_config("cifar10_vit_tiny", learning_rate=1.0)


def test_build_backbone_applies_width_overrides():
    config = configs.get_config(
        "cifar10_vit_tiny", depth=2, embed_dim=48, num_heads=3, mlp_ratio=1.5
    )
    backbone = pretraining.build_backbone(config)
    assert backbone.output_shape == (None, 48)
    blocks = [layer for layer in backbone.layers if "block" in layer.name]
    assert len(blocks) == 2
    fc1 = blocks[0].mlp_fc1.kernel.shape
    assert tuple(fc1) == (48, 72)  # 48 * 1.5
    assert blocks[0].attention.num_heads == 3
    # The named arch is used where no override is given.
    plain = pretraining.build_backbone(
        configs.get_config(
            "cifar10_vit_tiny", depth=1, embed_dim=None, num_heads=None
        )
    )
    assert plain.output_shape == (None, 192)


def test_dtype_policy_resolution_and_mixed_model(monkeypatch):
    resolve = pretraining.resolve_dtype_policy
    assert resolve("float32") == "float32"
    assert resolve("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setattr(pretraining, "_cpu_has_bfloat16_units", lambda: True)
    assert resolve("auto") == "mixed_bfloat16"
    monkeypatch.setattr(pretraining, "_cpu_has_bfloat16_units", lambda: False)
    assert resolve("auto") == "float32"
    assert resolve("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError, match="dtype_policy"):
        resolve("float16")
    config = configs.get_config(
        "cifar10_vit_tiny",
        depth=1,
        out_dim=32,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        dtype_policy="mixed_bfloat16",
    )
    model = pretraining.build_dino(config)
    block = model.student_backbone.get_layer("block_0")
    assert block.compute_dtype == "bfloat16"
    assert model.student_head.compute_dtype == "float32"
    assert configs.get_config("cifar10_vit_tiny")["dtype_policy"] == "float32"


def _run_recipe(name, *args):
    """Runs `recipes/<name>.py args` in a subprocess; asserts it succeeds."""
    cmd = [sys.executable, os.path.join(ROOT, "recipes", f"{name}.py")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        cmd + list(args), capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.backend_pass("torch")
def test_demo_recipe_end_to_end(tmp_path, cifar_sample):
    # In the torch pass only: recipes/demo.sh runs on PyTorch unless told
    # otherwise, and the two recipes it chains (pretrain, eval_knn) are
    # tested end to end on every backend by the tests around this one.
    # 400 held-out images (not the demo's 5,000: feature extraction of
    # 10,000 images would be most of this test's time).
    images, labels, _ = cifar_sample
    val = tmp_path / "val.npz"
    np.savez(val, images=images[:400], labels=labels[:400])
    out = tmp_path / "demo"
    # The folder of an earlier demo run (it holds the demo's marker file)
    # is replaced.
    out.mkdir()
    (out / ".keras_dino_demo").write_text("")
    (out / "stale.txt").write_text("from an earlier run\n")
    proc = _run_recipe(
        "demo",
        f"--output_dir={out}",
        "--epochs=1",
        "--schedule_epochs=3",
        "--max_images=256",
        f"--val_npz={val}",
        "--monitor_images=200",
        "--seed=1",
    )
    assert "4 steps x 1 epochs (of a 3-epoch schedule)" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| backbone | k=10 | k=20 | k=100 | k=200 |"
    assert rows[1].startswith("| random init") and rows[2].startswith(
        "| DINO teacher, 1 epochs"
    )
    values = [float(v) for v in rows[2].strip("| ").split(" | ")[1:]]
    assert len(values) == 4 and all(0.0 <= v <= 100.0 for v in values)
    assert rows[3].startswith("| gain (points) | ")
    assert "exact paired sign test p = " in proc.stdout
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "teacher_backbone.keras").exists()
    assert not (out / "stale.txt").exists()
    assert (out / ".keras_dino_demo").exists()


@pytest.mark.slow
def test_pretrain_recipe_end_to_end(tiny_npz, tmp_path):
    out = tmp_path / "run"
    args = [
        "--config=cifar10_vit_tiny",
        f"--npz={tiny_npz}",
        f"--output_dir={out}",
        "--epochs=2",
        "--depth=1",
        "--embed_dim=32",
        "--num_heads=2",
        "--mlp_ratio=1.5",
        "--patch_size=8",
        "--out_dim=32",
        "--head_hidden_dim=24",
        "--batch_size=8",
        "--local_crops_number=2",
        "--global_crops_scale=0.5,1.0",
        "--verbose=0",
    ]
    proc = _run_recipe("pretrain", *args)
    assert "global_crops_scale': (0.5, 1.0)" in proc.stdout
    assert "'embed_dim': 32, 'num_heads': 2, 'mlp_ratio': 1.5" in proc.stdout
    assert "'head_hidden_dim': 24" in proc.stdout
    assert (out / "teacher_backbone.keras").exists()
    assert len(_history(out)) == 2
    # Run again: it finds the finished run and does not train further.
    proc = _run_recipe("pretrain", *args)
    assert "Resuming from" in proc.stdout
    assert "2 of 2 epochs are done" in proc.stdout

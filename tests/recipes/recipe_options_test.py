"""The recipes' command-line behaviour: architecture names, flag checks,
missing optional packages, and the demo's output folder.

The evaluation recipes run in-process through `main(argv)`; the demo and
the checkpoint converter, which use absl's global flags, in a subprocess.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_dino.models import ViTBackbone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _recipe(name):
    """Imports `recipes/<name>.py` afresh (each has its own flags)."""
    spec = importlib.util.spec_from_file_location(
        f"recipe_{name}", os.path.join(ROOT, "recipes", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subprocess(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def recipe_flags():
    return _recipe("recipe_flags")


@pytest.fixture(scope="module")
def tiny_backbone_file(tmp_path_factory):
    """A 2-block, 16-wide ViT (patch 8) saved as .keras."""
    keras.utils.set_random_seed(0)
    backbone = ViTBackbone(
        image_size=32, patch_size=8, hidden_dim=16, num_layers=2, num_heads=2
    )
    path = str(tmp_path_factory.mktemp("options") / "backbone.keras")
    backbone.save(path)
    return path


@pytest.mark.parametrize(
    "arch, patch_size, expected",
    [
        ("vit_small", 16, ("ViT-S/16", 16)),
        ("vit_small", 8, ("ViT-S/8", 8)),
        ("vit_base", None, ("ViT-B/16", 16)),
        ("vit_tiny", 8, ("ViT-T/8", 8)),
        ("ViT-S/16", None, ("ViT-S/16", 16)),
        ("ViT-B/8", 8, ("ViT-B/8", 8)),
        ("S/8", None, ("ViT-S/8", 8)),
    ],
)
def test_reference_and_variant_arch_names(
    recipe_flags, arch, patch_size, expected
):
    assert recipe_flags.resolve_arch(arch, patch_size) == expected


def test_bad_arch_names_are_clear_errors(recipe_flags):
    with pytest.raises(ValueError, match="Unknown --arch 'vit_huge'"):
        recipe_flags.resolve_arch("vit_huge", 16)
    with pytest.raises(ValueError, match="has patch size 16 but --patch_size"):
        recipe_flags.resolve_arch("ViT-S/16", 8)


def test_random_init_from_reference_and_variant_names():
    recipe = _recipe("eval_knn")
    configs = []
    for args in (
        ["--arch=vit_tiny", "--patch_size=8"],
        ["--arch=ViT-T/8"],
    ):
        recipe.FLAGS.unparse_flags()
        recipe.FLAGS(
            ["eval_knn", "--random_init", "--image_size=32", *args]
            + ["--train_data=x.npz", "--val_data=y.npz"]
        )
        backbone = recipe.recipe_flags.backbone_from_flags(recipe.FLAGS, 32)
        configs.append(backbone.get_config())
    for config in configs:
        assert (config["hidden_dim"], config["num_heads"]) == (192, 3)
        assert (config["patch_size"], config["num_layers"]) == (8, 12)
    configs[0].pop("name"), configs[1].pop("name")
    assert configs[0] == configs[1]


def test_explicit_arch_must_match_the_loaded_backbone(tiny_backbone_file):
    with pytest.raises(ValueError, match="does not match the loaded backbone"):
        _recipe("eval_knn").main(
            [
                "eval_knn",
                f"--backbone={tiny_backbone_file}",
                "--arch=vit_small",
                "--train_data=missing_train.npz",
                "--val_data=missing_val.npz",
            ]
        )


def test_n_last_blocks_is_checked_against_the_depth(tiny_backbone_file):
    # The data files do not exist: the check comes before any reading.
    with pytest.raises(ValueError, match="only 2 transformer block"):
        _recipe("eval_linear").main(
            [
                "eval_linear",
                f"--backbone={tiny_backbone_file}",
                "--n_last_blocks=4",
                "--train_data=missing_train.npz",
                "--val_data=missing_val.npz",
            ]
        )
    from absl import flags

    with pytest.raises(flags.IllegalFlagValueError, match="at least 1"):
        _recipe("eval_linear").main(
            ["eval_linear", "--n_last_blocks=0", "--train_data=a.npz"]
            + ["--val_data=b.npz"]
        )


def test_missing_matplotlib_is_named_before_any_work(
    monkeypatch, tiny_backbone_file, tmp_path
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    recipe = _recipe("visualize_attention")
    with pytest.raises(ImportError, match=r"keras-dino\[eval\]") as error:
        recipe.main(
            [
                "visualize_attention",
                f"--backbone={tiny_backbone_file}",
                "--image_path=missing.jpg",
                f"--output_dir={tmp_path / 'attention'}",
            ]
        )
    assert "matplotlib (writing the PNG files)" in str(error.value)
    assert not (tmp_path / "attention").exists()


def test_missing_tensorflow_datasets_is_named(monkeypatch, tiny_backbone_file):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"keras-dino\[data\]") as error:
        _recipe("eval_knn").main(
            [
                "eval_knn",
                f"--backbone={tiny_backbone_file}",
                "--train_data=tfds:cifar10:train",
                "--val_data=tfds:cifar10:test",
            ]
        )
    assert "tensorflow-datasets (the tfds: data sources)" in str(error.value)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    foreign = tmp_path / "my_results"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me\n")
    proc = _subprocess("recipes/demo.py", f"--output_dir={foreign}")
    assert proc.returncode != 0
    assert "was not made by the demo" in proc.stderr
    assert sorted(os.listdir(foreign)) == ["important.txt"]
    # A file in the way is not removed either.
    path = tmp_path / "notes.txt"
    path.write_text("x\n")
    proc = _subprocess("recipes/demo.py", f"--output_dir={path}")
    assert proc.returncode != 0 and path.read_text() == "x\n"


@pytest.mark.slow
def test_convert_checkpoint_checks_an_explicit_arch(tmp_path):
    checkpoint_factory = _load_checkpoint_factory()
    checkpoint = str(tmp_path / "vit_t16.pth")
    # ViT-T width (192) and patch 16, one block.
    checkpoint_factory.write_checkpoint(
        checkpoint, dim=192, depth=1, patch=16, scale=0.1
    )
    output = tmp_path / "backbone.keras"
    proc = _subprocess(
        "recipes/convert_checkpoint.py",
        f"--checkpoint={checkpoint}",
        f"--output={output}",
        "--arch=vit_small",
    )
    assert proc.returncode != 0 and not output.exists()
    assert "--arch=vit_small means width 384 and patch 16" in proc.stderr
    assert "holds width 192 and patch 16" in proc.stderr
    proc = _subprocess(
        "recipes/convert_checkpoint.py",
        f"--checkpoint={checkpoint}",
        f"--output={output}",
        "--arch=vit_tiny",
        "--patch_size=16",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    backbone = keras.saving.load_model(output)
    assert (backbone.hidden_dim, backbone.patch_size) == (192, 16)
    assert np.isfinite(backbone.get_weights()[0]).all()


def _load_checkpoint_factory():
    spec = importlib.util.spec_from_file_location(
        "checkpoint_factory",
        os.path.join(ROOT, "tests", "weights", "checkpoint_factory.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""End-to-end runs of the evaluation recipes on tiny settings.

The recipes are imported from `recipes/` and run in-process through their
`main(argv)` (each recipe owns its flags, so they coexist in one process).
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from keras_dino.models import ViTBackbone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _load(module_name, *path):
    """Imports the module at `ROOT/path...` (a folder outside the package)."""
    spec = importlib.util.spec_from_file_location(
        module_name, os.path.join(ROOT, *path)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe(name):
    return _load(f"recipe_{name}", "recipes", f"{name}.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory, cifar_sample, image_folders):
    """A tiny backbone file, train / val `.npz` files of real CIFAR-10
    images and `train/` / `val/` folders of real JPEGs (conftest.py)."""
    root = tmp_path_factory.mktemp("eval_recipes")
    keras.utils.set_random_seed(0)
    backbone = ViTBackbone(
        image_size=32, patch_size=8, hidden_dim=16, num_layers=2, num_heads=2
    )
    backbone_path = str(root / "backbone.keras")
    backbone.save(backbone_path)
    images, labels = cifar_sample[0][:60], cifar_sample[1][:60]
    train, val = str(root / "train.npz"), str(root / "val.npz")
    np.savez(train, images=images[:40], labels=labels[:40])
    np.savez(val, images=images[40:], labels=labels[40:])
    return {
        "root": root,
        "backbone": backbone_path,
        "train": train,
        "val": val,
        "folders": str(image_folders),
    }


def test_eval_knn(files, capsys):
    root = files["root"]
    argv = [
        "eval_knn",
        f"--backbone={files['backbone']}",
        f"--train_data={files['train']}",
        f"--val_data={files['val']}",
        "--nb_knn=5,10",  # the reference's name of --ks
        "--batch_size=20",
        f"--cache_dir={root / 'knn_cache'}",
        f"--results_json={root / 'knn.json'}",
    ]
    results = _recipe("eval_knn").main(argv)
    assert sorted(results) == [5, 10]
    for accuracy in results.values():
        assert 0.0 <= accuracy["top1"] <= accuracy["top5"] <= 100.0
    assert "10-NN classifier result: Top1:" in capsys.readouterr().out
    with open(root / "knn.json") as f:
        assert json.load(f)["5"] == results[5]
    assert len(os.listdir(root / "knn_cache")) == 2


def test_eval_knn_random_init_on_image_folder(files):
    argv = [
        "eval_knn",
        "--random_init",
        "--arch=ViT-T/16",
        "--image_size=32",
        f"--train_data={os.path.join(files['folders'], 'train')}",
        f"--val_data={os.path.join(files['folders'], 'val')}",
        "--max_train=20",
        "--max_val=10",
        "--ks=3",
        "--batch_size=10",
    ]
    recipe = _recipe("eval_knn")
    results = recipe.main(argv)
    assert list(results) == [3]
    # Through the streaming tf.data reader of keras_dino.data (with the
    # tiny backbone: a second ViT-T would cost another compilation).
    streamed = recipe.main(
        [a for a in argv if a not in ("--random_init", "--arch=ViT-T/16")]
        + [f"--backbone={files['backbone']}", "--stream"]
    )
    assert list(streamed) == [3]


def test_eval_linear_fast_and_full(files, capsys):
    root = files["root"]
    recipe = _recipe("eval_linear")
    common = [
        "eval_linear",
        f"--backbone={files['backbone']}",
        f"--train_data={files['train']}",
        f"--val_data={files['val']}",
        "--n_last_blocks=2",
        "--batch_size=20",
        "--num_classes=10",
    ]
    fast = recipe.main(
        common
        + [
            "--fast",
            "--stream",
            f"--train_data={os.path.join(files['folders'], 'train')}",
            f"--val_data={os.path.join(files['folders'], 'val')}",
            "--max_train=40",
            "--max_val=20",
            "--epochs=2",
            f"--cache_dir={root / 'linear_cache'}",
            f"--save_probe={root / 'probe.keras'}",
            f"--results_json={root / 'linear.json'}",
        ]
    )
    assert 0.0 <= fast["best_top1"] <= 100.0 and fast["best_epoch"] in (1, 2)
    assert "Max accuracy so far" in capsys.readouterr().out
    assert len(os.listdir(root / "linear_cache")) == 2
    probe = keras.saving.load_model(root / "probe.keras", compile=False)
    assert probe.num_classes == 10 and probe.n_last_blocks == 2
    with open(root / "linear.json") as f:
        assert json.load(f)["best_top1"] == fast["best_top1"]
    full = recipe.main(common + ["--epochs=1"])
    assert len(full["history"]["val_acc1"]) == 1
    with pytest.raises(ValueError, match="--fast only"):
        recipe.main(common + ["--stream"])


def test_visualize_attention(files, tmp_path):
    image = os.path.join(files["folders"], "val", "airplane", "000.JPEG")
    written = _recipe("visualize_attention").main(
        [
            "visualize_attention",
            f"--backbone={files['backbone']}",
            f"--image_path={image}",
            "--image_size=60",
            f"--output_dir={tmp_path}",
            f"--figure={tmp_path / 'grid.png'}",
        ]
    )
    names = sorted(os.listdir(tmp_path))
    assert len(written) == 8 and "mask_th0.6_head1.png" in names
    assert written[-1] == str(tmp_path / "grid.png") and "grid.png" in names
    picture = keras.utils.load_img(os.path.join(tmp_path, "attn-head0.png"))
    assert picture.size == (56, 56)  # 60 px cropped to 7 patches of 8


def test_recipes_reject_bad_flags(files):
    from absl import flags

    with pytest.raises(flags.Error):
        _recipe("eval_knn").main(["eval_knn", "--no_such_flag=1"])
    with pytest.raises(ValueError, match="exactly one backbone source"):
        _recipe("eval_linear").main(
            [
                "eval_linear",
                f"--train_data={files['train']}",
                f"--val_data={files['val']}",
            ]
        )


def test_visualize_attention_with_imported_weights(files, tmp_path):
    checkpoint = str(tmp_path / "tiny_dino.pth")
    # A tiny checkpoint with the official DINO tensor names (ViT-T width).
    checkpoint_factory = _load(
        "checkpoint_factory", "tests", "weights", "checkpoint_factory.py"
    )
    checkpoint_factory.write_checkpoint(
        checkpoint, dim=192, depth=1, patch=16, scale=0.1
    )
    image = os.path.join(files["folders"], "train", "bird", "003.JPEG")
    out = tmp_path / "attention"
    written = _recipe("visualize_attention").main(
        [
            "visualize_attention",
            f"--pretrained_weights={checkpoint}",  # the alias of --preset
            f"--image_path={image}",
            "--image_size=64",
            "--threshold=0.5",
            f"--output_dir={out}",
        ]
    )
    # ViT-T width: 3 heads, each with a heat map, an overlay and a mask.
    assert len(written) == 1 + 3 * 3
    assert "mask_th0.5_head2.png" in os.listdir(out)

r"""Converts a reference DINO checkpoint into a Keras model file.

Reads a `.pth` (reference DINO backbone, full training checkpoint, or
Hugging Face `pytorch_model.bin`) or `.safetensors` file, a Hugging Face
model directory, a preset name or a URL, without executing pickled code,
and writes a `.keras` model or a `.weights.h5` file. Prints the inferred
architecture, the number of tensors and the size of the loss center.

Example:

```
python recipes/convert_checkpoint.py --checkpoint=dino_vits16 \
  --output=dino_vits16.keras
python recipes/convert_checkpoint.py --checkpoint=checkpoint.pth \
  --model=dino --output=dino.weights.h5
python recipes/convert_checkpoint.py --checkpoint=dino_vitbase16_pretrain.pth \
  --arch=vit_base --patch_size=16 --output=dino_vitb16.keras
```

The architecture is read from the tensors; `--arch` (optional) checks it.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint",
    None,
    "What to convert: a preset name (e.g. dino_vits16, fetched into the "
    "Keras cache), a reference .pth or .safetensors file, a Hugging Face "
    "model folder, or a URL.",
)
flags.DEFINE_string(
    "output",
    None,
    "File to write: a whole model (.keras) or its weights only (.weights.h5).",
)
flags.DEFINE_string(
    "arch",
    None,
    "Expected architecture, checked against the one read from the "
    "checkpoint: a reference name (vit_tiny, vit_small, vit_base) with "
    "--patch_size, or a variant name (ViT-S/16, ViT-B/8, ...). Default: "
    "no check.",
)
flags.DEFINE_integer(
    "patch_size",
    16,
    "Patch side in pixels (16 or 8) of a reference --arch name; a variant "
    "name such as ViT-S/8 carries its own.",
)
flags.DEFINE_enum(
    "model",
    "auto",
    ["auto", "backbone", "dino"],
    "What to build: the ViT backbone, the full DINO model (needs a full "
    "training checkpoint), or auto (DINO when the file has a head).",
)
flags.DEFINE_string(
    "checkpoint_key",
    "teacher",
    "Which network of a full training checkpoint becomes the backbone: "
    "teacher or student (as the reference's --checkpoint_key).",
)
flags.DEFINE_integer(
    "num_heads",
    0,
    "Attention heads, needed only for widths other than 192, 384 and 768 "
    "(0: 3, 6 or 12 from the width).",
)
flags.DEFINE_string(
    "file_hash",
    None,
    "Expected SHA-256 of the file, hexadecimal (default: not checked).",
)
flags.DEFINE_bool(
    "full_checkpoint",
    False,
    "For a preset name: fetch the full training checkpoint (student, "
    "teacher, head, center) instead of the backbone-only file.",
)
flags.mark_flags_as_required(["checkpoint", "output"])


def check_arch(backbone_config, arch, patch_size):
    """Raises a clear error if the checkpoint is not the `arch` asked for.

    `patch_size` None: 16 for a reference name, the variant's own for a
    variant name.
    """
    try:
        variant, patch = recipe_flags.resolve_arch(arch, patch_size)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    width = recipe_flags.VARIANT_WIDTHS[variant[4]]
    got = (backbone_config.get("hidden_dim"), backbone_config.get("patch_size"))
    if got != (width, patch):
        raise app.UsageError(
            f"--arch={arch} means width {width} and patch {patch}, but the "
            f"checkpoint holds width {got[0]} and patch {got[1]}. Drop "
            "--arch (the architecture is read from the file) or give the "
            "matching one."
        )


def main(argv):
    del argv
    from keras_dino import weights

    if not FLAGS.output.endswith((".keras", ".weights.h5")):
        raise app.UsageError("--output must end in .keras or .weights.h5.")
    full = FLAGS.full_checkpoint or FLAGS.model == "dino"
    path = weights.get_checkpoint_file(
        FLAGS.checkpoint, FLAGS.file_hash, full_checkpoint=full
    )
    obj, hf_config = weights.load_weights_file(path)
    overrides = {"num_heads": FLAGS.num_heads} if FLAGS.num_heads else {}
    summary = weights.describe_checkpoint(
        obj, hf_config, checkpoint_key=FLAGS.checkpoint_key, **overrides
    )
    if FLAGS.arch:
        given = FLAGS["patch_size"].present
        check_arch(
            summary["backbone_config"],
            FLAGS.arch,
            FLAGS.patch_size if given else None,
        )
    kind = FLAGS.model
    if kind == "auto":
        kind = "dino" if summary["num_head_tensors"] else "backbone"
    if kind == "dino":
        model = weights.dino_from_checkpoint(obj, backbone_kwargs=overrides)
        summary["skipped"] = [k for k in summary["skipped"] if k != "student"]
    else:
        model = weights.backbone_from_checkpoint(
            obj, hf_config, checkpoint_key=FLAGS.checkpoint_key, **overrides
        )
    print(f"Read {path} ({summary['format']}).")
    print("Architecture:", json.dumps(summary["backbone_config"]))
    if summary["head_config"]:
        print("Head:", json.dumps(summary["head_config"]))
    print(
        f"Tensors: {summary['num_backbone_tensors']} backbone, "
        f"{summary['num_head_tensors']} head; "
        f"not used: {summary['skipped'] or 'none'}."
    )
    print(f"Center size: {summary['center_size'] or 'none'}.")
    if summary["epoch"] is not None:
        print(f"Epoch: {summary['epoch']}.")
    print(
        f"Built {type(model).__name__} with {model.count_params():,} "
        "parameters."
    )
    if FLAGS.output.endswith(".weights.h5"):
        model.save_weights(FLAGS.output)
    else:
        model.save(FLAGS.output)
    print(f"Wrote {FLAGS.output}.")


if __name__ == "__main__":
    app.run(main)

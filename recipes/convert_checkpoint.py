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
```
"""

import json

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint",
    None,
    "Preset name, .pth / .safetensors file, Hugging Face directory or URL.",
)
flags.DEFINE_string("output", None, "Output .keras or .weights.h5 path.")
flags.DEFINE_enum(
    "model",
    "auto",
    ["auto", "backbone", "dino"],
    "What to build: the ViT backbone, the full DINO model (needs a full "
    "training checkpoint), or auto (DINO when the file has a head).",
)
flags.DEFINE_string(
    "checkpoint_key", "teacher", "Network of a full checkpoint (backbone)."
)
flags.DEFINE_integer("num_heads", 0, "Heads, for widths outside the table.")
flags.DEFINE_string("file_hash", None, "Expected SHA-256 of the file.")
flags.DEFINE_bool(
    "full_checkpoint",
    False,
    "For a preset name: fetch the full training checkpoint.",
)
flags.mark_flags_as_required(["checkpoint", "output"])


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

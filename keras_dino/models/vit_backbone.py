"""The DINO Vision Transformer backbone."""

import keras
from keras import ops

from keras_dino.layers.patch_embedding import PatchEmbedding
from keras_dino.layers.vit_block import ViTBlock
from keras_dino.models.presets import PRESETS
from keras_dino.models.presets import get_preset_loader

VARIANTS = {
    "ViT-T/16": {"hidden_dim": 192, "num_heads": 3, "patch_size": 16},
    "ViT-S/16": {"hidden_dim": 384, "num_heads": 6, "patch_size": 16},
    "ViT-S/8": {"hidden_dim": 384, "num_heads": 6, "patch_size": 8},
    "ViT-B/16": {"hidden_dim": 768, "num_heads": 12, "patch_size": 16},
    "ViT-B/8": {"hidden_dim": 768, "num_heads": 12, "patch_size": 8},
}


@keras.saving.register_keras_serializable(package="keras_dino")
class ViTBackbone(keras.Model):
    """Vision Transformer as used by DINO; outputs the normalised CLS token.

    Channels-last images of any height and width that are multiples of
    `patch_size` go in; the CLS token after the final LayerNorm,
    `(batch, hidden_dim)`, comes out. Position embeddings are interpolated
    for sizes other than `image_size` exactly as the reference does.

    Args:
        image_size: int, training resolution (sets the position grid).
        patch_size: int, patch side in pixels.
        hidden_dim: int, token width.
        num_layers: int, number of transformer blocks.
        num_heads: int, attention heads.
        mlp_ratio: float, MLP width as a multiple of `hidden_dim`.
        qkv_bias: bool, bias on the qkv projections.
        drop_path_rate: float, stochastic depth rate of the last block; rates
            grow linearly from 0 over the blocks.
        layer_norm_epsilon: float.
        seed: optional int, seeds stochastic depth.
        dtype: optional dtype policy.
        **kwargs: standard `keras.Model` arguments (e.g. `name`).

    Example:
    >>> backbone = ViTBackbone.from_variant("ViT-S/16")
    >>> features = backbone(np.zeros((1, 224, 224, 3), "float32"))
    >>> features.shape
    (1, 384)
    """

    # Name -> {"variant", "description"} of the official DINO weights.
    presets = PRESETS

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        hidden_dim=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        seed=None,
        dtype=None,
        **kwargs,
    ):
        # === Layers ===
        patch_embedding = PatchEmbedding(
            patch_size,
            hidden_dim,
            image_size,
            dtype=dtype,
            name="patch_embedding",
        )
        intermediate_dim = int(hidden_dim * mlp_ratio)
        blocks = []
        for i in range(num_layers):
            rate = drop_path_rate * i / max(num_layers - 1, 1)
            blocks.append(
                ViTBlock(
                    hidden_dim,
                    num_heads,
                    intermediate_dim,
                    qkv_bias=qkv_bias,
                    drop_path_rate=rate,
                    layer_norm_epsilon=layer_norm_epsilon,
                    seed=None if seed is None else seed + i,
                    dtype=dtype,
                    name=f"block_{i}",
                )
            )
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_norm"
        )

        # === Functional model ===
        # Set `trainable` once the layers exist: passed to Functional's
        # constructor it would not reach them.
        trainable = kwargs.pop("trainable", True)
        images = keras.Input(shape=(None, None, 3), name="images")
        x = patch_embedding(images)
        for block in blocks:
            x = block(x)
        x = final_norm(x)
        cls = x[:, 0]
        super().__init__(inputs=images, outputs=cls, dtype=dtype, **kwargs)

        # === Config ===
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.seed = seed
        self.patch_embedding = patch_embedding
        self.blocks = blocks
        self.final_norm = final_norm
        self.trainable = trainable

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """Builds a named variant: "ViT-T/16", "ViT-S/16", "ViT-S/8", ...

        The `ViT-` prefix may be left out ("S/16"). Keyword arguments
        override the variant's settings (e.g. `image_size`,
        `drop_path_rate`).
        """
        name = variant if variant.startswith("ViT-") else f"ViT-{variant}"
        if name not in VARIANTS:
            raise ValueError(
                f"Unknown ViT variant {variant!r}. Choose one of "
                f"{sorted(VARIANTS)}."
            )
        return cls(**{**VARIANTS[name], **kwargs})

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds a backbone with pretrained DINO weights.

        Args:
            preset: a name in `ViTBackbone.presets` (`"dino_vits16"`,
                `"dino_vits8"`, `"dino_vitb16"`, `"dino_vitb8"`: downloaded
                once into the Keras cache, `~/.keras/keras_dino/`); a local
                `.pth` / `.safetensors` file or Hugging Face model
                directory; a Hugging Face id such as
                `"facebook/dino-vits16"` whose files are in the local
                Hugging Face cache; or a `file://` / `https://` URL.
                Reference DINO, Hugging Face ViT and full training
                checkpoints are read without executing pickled code.
            load_weights: when false, build the preset's architecture only.
            **kwargs: `checkpoint_key` ("teacher" or "student"),
                `file_hash` (SHA-256 to check), `cache_dir`, or
                `ViTBackbone` arguments overriding the inferred config.

        Returns:
            A `ViTBackbone`, built by the loader that `keras_dino.weights`
            registers.

        Example:
        >>> sorted(ViTBackbone.presets)
        ['dino_vitb16', 'dino_vitb8', 'dino_vits16', 'dino_vits8']
        >>> backbone = ViTBackbone.from_preset("dino_vits16")
        """
        loader = get_preset_loader("backbone")
        return loader(preset, load_weights=load_weights, **kwargs)

    def _tokens(self, images, training=None):
        return self.patch_embedding(
            ops.convert_to_tensor(images, dtype=self.compute_dtype)
        )

    def get_last_self_attention(self, images, training=False):
        """Attention weights of the last block.

        Args:
            images: `(batch, height, width, 3)` images.

        Returns:
            `(batch, num_heads, tokens, tokens)` softmax weights, token 0
            being the CLS token.
        """
        x = self._tokens(images)
        for block in self.blocks[:-1]:
            x = block(x, training=training)
        _, scores = self.blocks[-1](
            x, training=training, return_attention_scores=True
        )
        return scores

    def get_intermediate_layers(self, images, n=1, training=False):
        """Token outputs of the last `n` blocks, each after the final norm.

        Returns:
            A list of `n` tensors `(batch, tokens, hidden_dim)`, the last
            block last.
        """
        if not 1 <= n <= self.num_layers:
            raise ValueError(
                f"n must be between 1 and num_layers={self.num_layers}, "
                f"got {n}."
            )
        x = self._tokens(images)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, training=training)
            if i >= self.num_layers - n:
                outputs.append(self.final_norm(x))
        return outputs

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path_rate": self.drop_path_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "seed": self.seed,
            # The layers hold the policy: Functional does not keep `dtype`.
            "dtype": keras.dtype_policies.serialize(
                self.patch_embedding.dtype_policy
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

"""Multi-head self-attention with one fused qkv projection."""

import keras
from keras import ops

from keras_dino.layers.dense import Dense


@keras.saving.register_keras_serializable(package="keras_dino")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Self-attention as in the reference DINO `Attention` module.

    One `Dense(3 * hidden_dim)` produces queries, keys and values (laid out
    `[q | k | v]`, each split into heads), scaled dot-product attention with
    scale `head_dim ** -0.5`, then an output projection.

    Args:
        hidden_dim: int, model width; must be divisible by `num_heads`.
        num_heads: int, number of attention heads.
        qkv_bias: bool, whether the qkv projection has a bias.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        x: `(batch, tokens, hidden_dim)` tensor.
        return_attention_scores: bool; when true, returns `(output,
            scores)` with scores of shape `(batch, heads, tokens, tokens)`
            (the softmax weights).
    """

    def __init__(self, hidden_dim, num_heads, qkv_bias=True, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads "
                f"({num_heads})."
            )
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.head_dim = self.hidden_dim // self.num_heads
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.qkv = Dense(
            3 * hidden_dim,
            use_bias=qkv_bias,
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.proj = Dense(
            hidden_dim,
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="proj",
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.hidden_dim,))

    def _fused_attention_is_slow(self, x):
        """True for 16-bit compute with PyTorch on a CPU.

        PyTorch's CPU flash-attention kernel is slow in bfloat16: with it,
        a mixed-precision DINO step of `cifar10_vit_tiny` took 0.45 s on
        2 cores, against 0.27 s with explicit matmuls and a float32
        softmax (0.39 s in float32).
        """
        if self.compute_dtype not in ("bfloat16", "float16"):
            return False
        if keras.backend.backend() != "torch":
            return False
        return str(getattr(x, "device", "cpu")).startswith("cpu")

    def call(self, x, return_attention_scores=False):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(
            self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim)
        )
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scale = self.head_dim**-0.5
        if return_attention_scores or self._fused_attention_is_slow(x):
            q = ops.transpose(q, (0, 2, 1, 3))
            k = ops.transpose(k, (0, 2, 3, 1))
            v = ops.transpose(v, (0, 2, 1, 3))
            logits = ops.matmul(q * scale, k)
            # The softmax runs in float32 under mixed precision.
            scores = ops.cast(
                ops.softmax(ops.cast(logits, "float32"), axis=-1),
                logits.dtype,
            )
            out = ops.transpose(ops.matmul(scores, v), (0, 2, 1, 3))
        else:
            out = ops.dot_product_attention(q, k, v, scale=scale)
        out = ops.reshape(out, (batch, tokens, self.hidden_dim))
        out = self.proj(out)
        if return_attention_scores:
            return out, scores
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "qkv_bias": self.qkv_bias,
            }
        )
        return config

"""Pre-norm transformer block of the DINO Vision Transformer."""

import keras

from keras_dino.layers.attention import MultiHeadSelfAttention
from keras_dino.layers.dense import Dense
from keras_dino.layers.drop_path import DropPath


@keras.saving.register_keras_serializable(package="keras_dino")
class ViTBlock(keras.layers.Layer):
    """`x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`.

    The MLP is `Dense(intermediate_dim)`, exact GELU, `Dense(hidden_dim)`.

    Args:
        hidden_dim: int, model width.
        num_heads: int, attention heads.
        intermediate_dim: int, MLP hidden width (4 * hidden_dim in DINO).
        qkv_bias: bool, bias on the qkv projection.
        drop_path_rate: float, stochastic depth rate of this block.
        layer_norm_epsilon: float, LayerNorm epsilon.
        seed: optional int seed for stochastic depth.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        x: `(batch, tokens, hidden_dim)` tensor.
        training: bool, enables stochastic depth.
        return_attention_scores: bool; also return the attention weights.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        qkv_bias=True,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.seed = seed
        init = keras.initializers.RandomNormal(stddev=0.02)
        common = {"dtype": self.dtype_policy}
        self.norm1 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="norm1", **common
        )
        self.attention = MultiHeadSelfAttention(
            hidden_dim, num_heads, qkv_bias=qkv_bias, name="attention", **common
        )
        self.norm2 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="norm2", **common
        )
        self.mlp_fc1 = Dense(
            intermediate_dim, kernel_initializer=init, name="mlp_fc1", **common
        )
        self.mlp_fc2 = Dense(
            hidden_dim, kernel_initializer=init, name="mlp_fc2", **common
        )
        self.drop_path = DropPath(
            drop_path_rate, seed=seed, name="drop_path", **common
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.norm1.build(input_shape)
        self.attention.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp_fc1.build(input_shape)
        self.mlp_fc2.build(input_shape[:-1] + (self.intermediate_dim,))
        self.drop_path.build(input_shape)

    def call(self, x, training=None, return_attention_scores=False):
        attn = self.attention(
            self.norm1(x), return_attention_scores=return_attention_scores
        )
        if return_attention_scores:
            attn, scores = attn
        x = x + self.drop_path(attn, training=training)
        h = self.mlp_fc1(self.norm2(x))
        h = keras.activations.gelu(h, approximate=False)
        x = x + self.drop_path(self.mlp_fc2(h), training=training)
        if return_attention_scores:
            return x, scores
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "qkv_bias": self.qkv_bias,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "seed": self.seed,
            }
        )
        return config

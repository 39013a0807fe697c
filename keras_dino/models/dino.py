"""The DINO self-distillation model."""

import math

import keras
from keras import ops

from keras_dino import losses
from keras_dino.layers.dino_head import DINOHead
from keras_dino.utils.distribution import scale_loss_for_replicas
from keras_dino.utils.serialization import with_deserialized_backbone

_BN_STATISTICS = ("moving_mean", "moving_variance")


def _clone_without_stochastic_depth(backbone):
    config = backbone.get_config()
    if "drop_path_rate" in config:
        config["drop_path_rate"] = 0.0
    config["name"] = f"teacher_{backbone.name}"
    teacher = backbone.__class__.from_config(config)
    teacher.set_weights(backbone.get_weights())
    return teacher


def _head_dtype_policy(policy):
    """float32 for the heads when `policy` computes in 16 bits."""
    if policy.compute_dtype in ("bfloat16", "float16"):
        return "float32"
    return policy


def _ema_pairs(student, teacher):
    pairs = []
    student_weights, teacher_weights = student.weights, teacher.weights
    if len(student_weights) != len(teacher_weights):
        raise ValueError(
            "Student and teacher have different numbers of weights "
            f"({len(student_weights)} vs {len(teacher_weights)})."
        )
    for s, t in zip(student_weights, teacher_weights):
        if tuple(s.shape) != tuple(t.shape):
            raise ValueError(
                f"Student weight {s.path} {s.shape} does not match teacher "
                f"weight {t.path} {t.shape}."
            )
        if s.name not in _BN_STATISTICS:
            pairs.append((s, t))
    return pairs


@keras.saving.register_keras_serializable(package="keras_dino")
class DINO(keras.Model):
    """Self-distillation with no labels (DINO), trained with `fit`.

    The student is `backbone` + a `DINOHead`; the teacher is a copy of both
    without stochastic depth, never touched by the optimizer, that follows
    the student by an exponential moving average after every optimizer
    step. Inputs are multi-crop batches: a tuple `(global_1, global_2,
    local_1, ..., local_N)` of `(batch, height, width, 3)` tensors (a dataset
    may also yield `(crops,)` or `(crops, labels)`). Crops of equal
    resolution go through the backbone in one call. The teacher sees the
    global crops; the loss is `keras_dino.losses.dino_loss` with the current
    center, after which the center moves towards the batch mean of the
    teacher logits (averaged over replicas).

    Schedules that change per epoch (teacher temperature, center momentum)
    or that need the run length (teacher momentum) are set by the callbacks
    in `keras_dino.callbacks`; `fit` adds the paper's defaults for any that
    is not given, and a `NonFiniteLossGuard`. The per-step arithmetic runs
    inside the compiled step from `optimizer.iterations`.

    Logged every step: `loss`, `learning_rate`, `weight_decay`,
    `teacher_momentum`, `teacher_temperature`, `teacher_entropy` (entropy
    of the centered, sharpened teacher output: near `ln(out_dim)` means
    uniform collapse, near 0 means one-prototype collapse) and `kl` (mean
    KL divergence from teacher to student: near 0 with either collapse).

    Args:
        backbone: a `keras.Model` mapping images to `(batch, dim)` features
            (e.g. `ViTBackbone` with `drop_path_rate=0.1`); it becomes the
            student backbone.
        out_dim: int, number of prototypes K of the head.
        hidden_dim: int, head MLP width.
        bottleneck_dim: int, head bottleneck width.
        head_layers: int, head MLP depth.
        use_bn_in_head: bool, BatchNormalization in the head.
        norm_last_layer: bool, fix the head's weight-norm gain at 1.
        student_temperature: float.
        num_global_crops: int, the leading crops that the teacher sees.
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    backbone = keras_dino.models.ViTBackbone.from_variant(
        "ViT-S/16", drop_path_rate=0.1)
    model = keras_dino.models.DINO(backbone, out_dim=65536)
    model.compile(optimizer=keras_dino.optimizers.dino_adamw(
        batch_size=64, steps_per_epoch=len(dataset), epochs=100))
    model.fit(dataset, epochs=100)
    ```

    Reference:
        Caron et al., "Emerging Properties in Self-Supervised Vision
        Transformers", ICCV 2021.
    """

    def __init__(
        self,
        backbone,
        out_dim=65536,
        hidden_dim=2048,
        bottleneck_dim=256,
        head_layers=3,
        use_bn_in_head=False,
        norm_last_layer=True,
        student_temperature=0.1,
        num_global_crops=2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.out_dim = int(out_dim)
        self.hidden_dim = int(hidden_dim)
        self.bottleneck_dim = int(bottleneck_dim)
        self.head_layers = int(head_layers)
        self.use_bn_in_head = bool(use_bn_in_head)
        self.norm_last_layer = bool(norm_last_layer)
        self.student_temperature = float(student_temperature)
        self.num_global_crops = int(num_global_crops)

        feature_dim = backbone.output_shape[-1]
        head_args = {
            "out_dim": out_dim,
            "hidden_dim": hidden_dim,
            "bottleneck_dim": bottleneck_dim,
            "num_layers": head_layers,
            "use_bn": use_bn_in_head,
            "norm_last_layer": norm_last_layer,
            # The heads keep float32 under a mixed-precision policy: their
            # cosine logits are divided by temperatures as low as 0.04.
            "dtype": _head_dtype_policy(self.dtype_policy),
        }
        self.student_backbone = backbone
        self.student_head = DINOHead(name="student_head", **head_args)
        self.student_head.build((None, feature_dim))
        self.teacher_backbone = _clone_without_stochastic_depth(backbone)
        self.teacher_head = DINOHead(name="teacher_head", **head_args)
        self.teacher_head.build((None, feature_dim))
        self.teacher_head.set_weights(self.student_head.get_weights())
        self.teacher_backbone.trainable = False
        self.teacher_head.trainable = False
        self._ema_pairs()  # Fails early on a student/teacher mismatch.

        def state(name, value, dtype="float32", aggregation="none"):
            return self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(value),
                dtype=dtype,
                trainable=False,
                aggregation=aggregation,
                name=name,
            )

        # "mean": under tf.distribute the replicas' updates are averaged,
        # which is the reference's all-reduce of the batch center.
        self.center = self.add_weight(
            shape=(1, self.out_dim),
            initializer="zeros",
            trainable=False,
            aggregation="mean",
            name="center",
        )
        self.teacher_temperature = state("teacher_temperature", 0.04)
        self.center_momentum = state("center_momentum", 0.9)
        self.teacher_momentum_base = state("teacher_momentum_base", 0.996)
        self.teacher_momentum_final = state("teacher_momentum_final", 1.0)
        self.teacher_momentum_steps = state(
            "teacher_momentum_steps", 0, dtype="int32"
        )
        self.teacher_entropy_tracker = keras.metrics.Mean(
            name="teacher_entropy"
        )
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.built = True

    # --- forward -------------------------------------------------------

    @staticmethod
    def _crops(data):
        """Crops from `crops`, `(crops,)` or `(crops, labels)`."""
        if isinstance(data, dict):
            data = data.get("crops", data)
        if isinstance(data, (list, tuple)) and data:
            if isinstance(data[0], (list, tuple)):
                data = data[0]
        if not isinstance(data, (list, tuple)) or len(data) < 2:
            raise ValueError(
                "DINO expects a tuple of crop batches (global_1, global_2, "
                "local_1, ...), each (batch, height, width, 3); got "
                f"{type(data).__name__}. Use keras_dino.data to build a "
                "multi-crop dataset."
            )
        return tuple(data)

    def _backbone_by_resolution(self, backbone, crops, training):
        outputs, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and tuple(crops[end].shape[1:3]) == tuple(
                crops[start].shape[1:3]
            ):
                end += 1
            group = crops[start:end]
            batch = group[0] if len(group) == 1 else ops.concatenate(group, 0)
            outputs.append(backbone(batch, training=training))
            start = end
        return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, 0)

    def call(self, crops, training=None):
        """Student logits of all crops, crop-major `(crops * batch, K)`."""
        crops = self._crops(crops)
        features = self._backbone_by_resolution(
            self.student_backbone, crops, training
        )
        return self.student_head(features, training=training)

    def teacher_logits(self, crops):
        """Teacher logits of the global crops, `(G * batch, K)`."""
        crops = self._crops(crops)[: self.num_global_crops]
        features = self._backbone_by_resolution(
            self.teacher_backbone, crops, False
        )
        # As in the reference, a teacher head with BatchNorm normalises
        # with the statistics of the batch.
        logits = self.teacher_head(features, training=self.use_bn_in_head)
        return ops.stop_gradient(logits)

    # --- loss ----------------------------------------------------------

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        crops = self._crops(x)
        if y_pred is None:
            y_pred = self(crops, training=training)
        # The loss runs in float32 under a mixed-precision policy.
        y_pred = ops.cast(y_pred, "float32")
        teacher = ops.cast(self.teacher_logits(crops), "float32")
        center = ops.convert_to_tensor(self.center)
        temperature = ops.convert_to_tensor(self.teacher_temperature)
        loss = losses.dino_loss(
            y_pred,
            teacher,
            center,
            temperature,
            student_temperature=self.student_temperature,
            num_global_crops=self.num_global_crops,
            num_crops=len(crops),
        )
        entropy = losses.teacher_entropy(teacher, center, temperature)
        self.teacher_entropy_tracker.update_state(entropy)
        self.kl_tracker.update_state(loss - entropy)
        if training:
            self.center.assign(
                losses.update_center(center, teacher, self.center_momentum)
            )
        return scale_loss_for_replicas(loss)

    # --- training step -------------------------------------------------

    def teacher_momentum_at(self, step):
        """Cosine teacher momentum at an iteration (base while unset)."""
        base = ops.convert_to_tensor(self.teacher_momentum_base)
        final = ops.convert_to_tensor(self.teacher_momentum_final)
        total = ops.cast(self.teacher_momentum_steps, "float32")
        step = ops.minimum(ops.cast(step, "float32"), total - 1.0)
        progress = step / ops.maximum(total, 1.0)
        cosine = final + 0.5 * (base - final) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(total > 0, cosine, base)

    def _ema_pairs(self):
        """(student, teacher) weight pairs that the EMA updates."""
        return _ema_pairs(
            self.student_backbone, self.teacher_backbone
        ) + _ema_pairs(self.student_head, self.teacher_head)

    def _after_optimizer_step(self):
        """Teacher EMA with the momentum of the step just taken; step logs."""
        step = self.optimizer.iterations - 1
        momentum = self.teacher_momentum_at(step)
        for student, teacher in self._ema_pairs():
            m = ops.cast(momentum, teacher.dtype)
            teacher.assign(teacher * m + (1.0 - m) * student)
        logs = {
            "teacher_momentum": momentum,
            "teacher_temperature": ops.convert_to_tensor(
                self.teacher_temperature
            ),
        }
        optimizer = self.optimizer
        if hasattr(optimizer, "learning_rate_at"):
            logs["learning_rate"] = optimizer.learning_rate_at(step)
            logs["weight_decay"] = optimizer.weight_decay_at(step)
        return logs

    def train_step(self, *args):
        backend = keras.backend.backend()
        if backend == "jax":
            state, data = args
            logs, state = super().train_step(state, (self._crops(data),))
            trainable, non_trainable, optimizer_vars, metrics_vars = state
            mapping = (
                list(zip(self.trainable_variables, trainable))
                + list(zip(self.non_trainable_variables, non_trainable))
                + list(zip(self.optimizer.variables, optimizer_vars))
            )
            with keras.StatelessScope(state_mapping=mapping) as scope:
                extra = self._after_optimizer_step()
            non_trainable = [
                scope.get_current_value(v) for v in self.non_trainable_variables
            ]
            state = (trainable, non_trainable, optimizer_vars, metrics_vars)
            return {**logs, **extra}, state
        (data,) = args
        logs = super().train_step((self._crops(data),))
        if backend == "torch":
            import torch

            with torch.no_grad():
                extra = self._after_optimizer_step()
        else:
            extra = self._after_optimizer_step()
        return {**logs, **extra}

    def test_step(self, *args):
        if keras.backend.backend() == "jax":
            state, data = args
            return super().test_step(state, (self._crops(data),))
        (data,) = args
        return super().test_step((self._crops(data),))

    # --- compile / fit -------------------------------------------------

    def compile(self, optimizer=None, **kwargs):
        """Configures training; `optimizer` is required.

        Use `keras_dino.optimizers.dino_adamw(batch_size, steps_per_epoch,
        epochs)` for the paper's optimiser. The head's last layer is
        registered with the optimiser so that it rests during the
        first `freeze_last_layer_epochs`.
        """
        if optimizer is None or isinstance(optimizer, str):
            raise ValueError(
                "DINO.compile needs an optimizer instance; use "
                "keras_dino.optimizers.dino_adamw(batch_size=..., "
                "steps_per_epoch=..., epochs=...) for the paper's AdamW."
            )
        if kwargs.get("loss") is not None:
            raise ValueError(
                "DINO computes its own loss; do not pass `loss` to compile."
            )
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, **kwargs)
        if hasattr(optimizer, "freeze_variables"):
            optimizer.freeze_variables(
                [
                    v
                    for v in self.student_head.last_layer_variables
                    if v.trainable
                ]
            )

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit` plus the DINO schedule callbacks' defaults."""
        from keras_dino.callbacks import with_default_callbacks

        return super().fit(
            *args, callbacks=with_default_callbacks(callbacks), **kwargs
        )

    # --- presets -------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A DINO model from an official full training checkpoint.

        Rebuilds student and teacher backbones and heads and the center
        from a reference `checkpoint.pth` (or a preset name / URL), so that
        training can continue from it. See `keras_dino.weights.load_dino`.
        """
        from keras_dino.weights.presets import load_dino

        return load_dino(preset, load_weights=load_weights, **kwargs)

    # --- serialisation -------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(
                    self.student_backbone
                ),
                "out_dim": self.out_dim,
                "hidden_dim": self.hidden_dim,
                "bottleneck_dim": self.bottleneck_dim,
                "head_layers": self.head_layers,
                "use_bn_in_head": self.use_bn_in_head,
                "norm_last_layer": self.norm_last_layer,
                "student_temperature": self.student_temperature,
                "num_global_crops": self.num_global_crops,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_deserialized_backbone(config))

"""The DINO self-distillation model."""

import warnings

import keras
from keras import ops

from keras_dino import losses
from keras_dino.layers.dino_head import DINOHead
from keras_dino.schedules import DINOSchedule
from keras_dino.utils.distribution import logs_for_replica_reduction
from keras_dino.utils.distribution import scale_loss_for_replicas
from keras_dino.utils.ema import all_finite
from keras_dino.utils.ema import ema_update
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


_NO_SCHEDULE = (
    "DINO.compile needs schedule=keras_dino.schedules.DINOSchedule(...), "
    "the run's learning rate, weight decay, teacher momentum and "
    "temperature, center momentum and last-layer freeze; the paper's is "
    "DINOSchedule.paper(batch_size=..., steps_per_epoch=..., epochs=...)."
)


def _check_crops(crops, num_global_crops):
    """Static checks of a multi-crop tuple (dtype, order, batch sizes)."""
    batch, global_size = None, None
    for i, crop in enumerate(crops):
        shape = tuple(crop.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"Crop {i} has shape {shape}; DINO expects (batch, height, "
                "width, 3) crop batches."
            )
        dtype = keras.backend.standardize_dtype(crop.dtype)
        if "float" not in dtype:
            raise ValueError(
                f"Crop {i} is {dtype}; DINO expects normalised float crops "
                "(keras_dino.data.MultiCropAugmentation gives them). Convert "
                "images with (x / 255 - mean) / std first."
            )
        size = shape[1:3]
        if i < num_global_crops:
            if global_size is not None and size != global_size:
                raise ValueError(
                    f"The {num_global_crops} global crops must share one "
                    f"resolution; crop {i} is {size}, crop 0 {global_size}."
                )
            global_size = size
        elif None not in size and None not in global_size:
            if size[0] * size[1] > global_size[0] * global_size[1]:
                raise ValueError(
                    f"Crop {i} ({size}) is larger than the global crops "
                    f"({global_size}): give the {num_global_crops} global "
                    "crops first, then the local crops."
                )
        if shape[0] is not None:
            if batch is not None and shape[0] != batch:
                raise ValueError(
                    f"All crop batches must have the same batch size; crop "
                    f"{i} has {shape[0]}, crop 0 has {batch}."
                )
            batch = shape[0]


def _check_optimizer_fits_schedule(optimizer, schedule):
    """Refuses an optimizer whose own lr or decay the schedule would fight."""
    own_lr = optimizer._learning_rate
    if schedule.learning_rate is not None and (
        isinstance(own_lr, keras.optimizers.schedules.LearningRateSchedule)
        or not isinstance(own_lr, keras.Variable)
    ):
        raise ValueError(
            f"{type(optimizer).__name__} has its own learning-rate schedule "
            "and the DINOSchedule sets one too. Give the optimizer a float "
            "learning rate, or pass DINOSchedule(learning_rate=None) to "
            "keep the optimizer's."
        )
    if schedule.weight_decay is None or getattr(
        optimizer, "follows_weight_decay_schedule", False
    ):
        return
    constant = schedule.weight_decay == schedule.weight_decay_end
    own = optimizer.weight_decay or 0.0
    if not constant or abs(own - schedule.weight_decay) > 1e-12:
        raise ValueError(
            f"{type(optimizer).__name__} applies a constant weight_decay "
            f"({optimizer.weight_decay}) but the DINOSchedule asks for "
            f"{schedule.weight_decay} -> {schedule.weight_decay_end}. Use "
            "keras_dino.optimizers.DINOAdamW / DINOSGD / LARS, which follow "
            "the schedule, or give the schedule weight_decay=None (the "
            "optimizer's own decay) or a constant equal to the optimizer's."
        )


class _StepVariables:
    """Variables the training step reads besides the model's own lists.

    A plain object, so that Keras does not track the optimizer slots in it
    as weights of the model.

    Attributes:
        frozen: the frozen last-layer variables and their optimizer slots.
        student: the student's trainable weights (checked for finiteness).
        ema: the `(student, teacher)` weight pairs of the teacher's EMA.
    """

    def __init__(self):
        self.frozen = []
        self.student = []
        self.ema = []


def _inner_optimizer(optimizer):
    """The optimizer inside a `LossScaleOptimizer` (or itself)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _slots_of(optimizer, variables):
    """The optimizer variables named after `variables` (their slots).

    Keras names a slot `{variable.path with "/" -> "_"}_{slot}`
    (`add_variable_from_reference`); keras_dino's optimizers follow the
    same rule for their per-variable step counts.
    """
    prefixes = tuple(v.path.replace("/", "_") + "_" for v in variables)
    return [v for v in optimizer.variables if v.name.startswith(prefixes)]


def _batch_norm_in_train_mode(model):
    """Lets BatchNormalization layers of a frozen model use batch statistics.

    Keras runs a non-trainable BatchNormalization in inference mode; the
    reference's teacher is in train mode (batch statistics, running
    statistics updated) while its weights come from the EMA only. The
    layers are made trainable with all their variables non-trainable.
    """
    found = False
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            for variable in layer.variables:
                variable.trainable = False
            found = True
    return found


def _check_backbone(backbone):
    if not isinstance(backbone, keras.Model):
        raise ValueError(
            "DINO needs a keras.Model backbone mapping images to (batch, "
            f"dim) features; got {type(backbone).__name__}."
        )
    shape = backbone.output_shape
    if not isinstance(shape, tuple) or len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "The DINO backbone must return (batch, dim) features (e.g. the "
            f"CLS token or pooled features); {backbone.name} returns "
            f"{shape}. Pool or select a token inside the backbone."
        )
    return int(shape[-1])


def _positive_int(name, value):
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_dino")
class DINO(keras.Model):
    """Self-distillation with no labels (DINO), trained with `fit`.

    The student is `backbone` + a `DINOHead`; the teacher is a copy of both
    without stochastic depth, never touched by the optimizer, that follows
    the student by an exponential moving average after every step. Inputs
    are multi-crop batches: a tuple `(global_1, global_2, local_1, ...,
    local_N)` of float `(batch, height, width, 3)` tensors (a dataset may
    also yield `(crops,)` or `(crops, labels)`). Crops of equal resolution
    go through the backbone in one call. The teacher sees the global crops;
    the loss is `keras_dino.losses.dino_loss` with the current center,
    after which the center moves towards the batch mean of the teacher
    logits (averaged over replicas).

    The run's state has one owner: the `keras_dino.schedules.DINOSchedule`
    given to `compile` defines learning rate, weight decay, teacher
    momentum, teacher temperature, center momentum and the last-layer
    freeze over the whole run, and the training step evaluates it from
    `DINO.iteration`, a counter saved with the model that advances once per
    step (also when a loss-scaled step is skipped, as the reference's
    iteration does). Any Keras optimizer works: the step writes the
    scheduled learning rate into it, and the weight decay into keras_dino
    optimizers (`scheduled_weight_decay`); the frozen last layer and its
    optimizer slots are restored after the update, so they are not
    touched, as when PyTorch skips a parameter whose gradient is `None`.

    A backbone with BatchNormalization gets a teacher whose BN layers run
    in train mode (batch statistics, own running statistics), as the
    reference's; running statistics are not part of the EMA.

    Logged every step: `loss`, `learning_rate`, `weight_decay`,
    `teacher_momentum`, `teacher_temperature`, `teacher_entropy` (entropy
    of the centered, sharpened teacher output: near `ln(out_dim)` means
    uniform collapse, near 0 means one-prototype collapse), `kl` (mean
    KL divergence from teacher to student: near 0 with either collapse),
    `weights_finite` (1 while every student weight is finite) and, under
    loss scaling, `loss_scale`.

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
        student_temperature: float > 0.
        num_global_crops: int, the leading crops that the teacher sees.
        augmentation: optional Keras layer that makes the crops inside the
            training step from each batch, e.g.
            `keras_dino.layers.DeviceMultiCropAugmentation`: the data then
            gives dicts with `images` and the crop parameters
            (`keras_dino.numpy_data.ImageFolderDataset`), and the crops
            are computed on the accelerator, compiled with the step. It
            must have no weights (it is built without an input shape).
            Without it the data gives the crops themselves.
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    backbone = keras_dino.models.ViTBackbone.from_variant(
        "ViT-S/16", drop_path_rate=0.1)
    model = keras_dino.models.DINO(backbone, out_dim=65536)
    model.compile(
        optimizer=keras.optimizers.AdamW(clipnorm=3.0),
        schedule=keras_dino.schedules.DINOSchedule.paper(
            batch_size=64, steps_per_epoch=len(dataset), epochs=100),
    )
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
        augmentation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if augmentation is not None and not isinstance(
            augmentation, keras.layers.Layer
        ):
            raise ValueError(
                "`augmentation` must be a Keras layer that maps a batch to "
                "its crops (e.g. keras_dino.layers."
                "DeviceMultiCropAugmentation.from_sampler(sampler)) or "
                f"None. Received: {type(augmentation).__name__}"
            )
        if augmentation is not None and not augmentation.built:
            # A weightless op on the batch: built here, so that `fit` does
            # not read (and waste) a batch to build it symbolically.
            augmentation.build(None)
        if augmentation is not None and augmentation.weights:
            raise ValueError(
                "`augmentation` must be a layer without weights (it runs "
                "on each batch inside the step and is not trained); "
                f"{augmentation.name} has {len(augmentation.weights)}."
            )
        self.augmentation = augmentation
        feature_dim = _check_backbone(backbone)
        self.out_dim = _positive_int("out_dim", out_dim)
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        self.bottleneck_dim = _positive_int("bottleneck_dim", bottleneck_dim)
        self.head_layers = _positive_int("head_layers", head_layers)
        self.use_bn_in_head = bool(use_bn_in_head)
        self.norm_last_layer = bool(norm_last_layer)
        self.student_temperature = float(student_temperature)
        if not self.student_temperature > 0:
            raise ValueError(
                "student_temperature must be > 0, got "
                f"{student_temperature!r} (the paper uses 0.1)."
            )
        self.num_global_crops = _positive_int(
            "num_global_crops", num_global_crops
        )

        head_args = {
            "out_dim": self.out_dim,
            "hidden_dim": self.hidden_dim,
            "bottleneck_dim": self.bottleneck_dim,
            "num_layers": self.head_layers,
            "use_bn": self.use_bn_in_head,
            "norm_last_layer": self.norm_last_layer,
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
        self._teacher_has_batch_norm = any(
            [
                _batch_norm_in_train_mode(self.teacher_backbone),
                _batch_norm_in_train_mode(self.teacher_head),
            ]
        )
        self._ema_pairs()  # Fails early on a student/teacher mismatch.

        # "mean": under tf.distribute the replicas' updates are averaged,
        # which is the reference's all-reduce of the batch center.
        self.center = self.add_weight(
            shape=(1, self.out_dim),
            initializer="zeros",
            trainable=False,
            aggregation="mean",
            name="center",
        )
        self.iteration = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            aggregation="only_first_replica",
            name="iteration",
        )
        self.teacher_entropy_tracker = keras.metrics.Mean(
            name="teacher_entropy"
        )
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.schedule = None
        self._step_variables = _StepVariables()
        self.built = True

    # --- forward -------------------------------------------------------

    def _crops(self, data):
        """Crops from `crops`, `(crops,)` or `(crops, labels)`, checked.

        With an `augmentation` layer, `data` may instead be (or begin
        with) the dict of images and crop parameters it takes.
        """
        if isinstance(data, (list, tuple)) and data:
            if isinstance(data[0], (list, tuple, dict)):
                data = data[0]
        if isinstance(data, dict) and "images" in data:
            if self.augmentation is None:
                raise ValueError(
                    "DINO got a batch of `images` with crop parameters but "
                    "has no `augmentation` layer to make the crops: build "
                    "it with DINO(..., augmentation=keras_dino.layers."
                    "DeviceMultiCropAugmentation.from_sampler(sampler)), "
                    "or give the crops themselves."
                )
            data = self.augmentation(data)
        if isinstance(data, dict):
            data = data.get("crops", data)
        if not isinstance(data, (list, tuple)) or len(data) < 2:
            raise ValueError(
                "DINO expects a tuple of crop batches (global_1, global_2, "
                "local_1, ...), each (batch, height, width, 3); got "
                f"{type(data).__name__}. Use keras_dino.data to build a "
                "multi-crop dataset."
            )
        crops = tuple(data)
        if len(crops) < self.num_global_crops:
            raise ValueError(
                f"DINO was built with num_global_crops="
                f"{self.num_global_crops} but got {len(crops)} crop batches."
            )
        _check_crops(crops, self.num_global_crops)
        return crops

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

    def teacher_logits(self, crops, training=False):
        """Teacher logits of the global crops, `(G * batch, K)`.

        With `training=True`, BatchNormalization layers of the teacher (if
        any) normalise with the batch statistics, as the reference's
        teacher does during training.
        """
        crops = self._crops(crops)[: self.num_global_crops]
        bn_training = bool(training) and self._teacher_has_batch_norm
        features = self._backbone_by_resolution(
            self.teacher_backbone, crops, bn_training
        )
        logits = self.teacher_head(features, training=bn_training)
        return ops.stop_gradient(logits)

    # --- loss ----------------------------------------------------------

    def _scheduled(self, name, default):
        """A schedule value at the current iteration, or the paper's."""
        if self.schedule is None:
            return ops.convert_to_tensor(default, "float32")
        return getattr(self.schedule, f"{name}_at")(self.iteration)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        crops = self._crops(x)
        if y_pred is None:
            y_pred = self(crops, training=training)
        # The loss runs in float32 under a mixed-precision policy.
        y_pred = ops.cast(y_pred, "float32")
        teacher = ops.cast(self.teacher_logits(crops, training), "float32")
        center = ops.convert_to_tensor(self.center)
        temperature = self._scheduled("teacher_temperature", 0.04)
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
            momentum = self._scheduled("center_momentum", 0.9)
            self.center.assign(losses.update_center(center, teacher, momentum))
        return scale_loss_for_replicas(loss)

    # --- training step -------------------------------------------------

    def _ema_pairs(self):
        """(student, teacher) weight pairs that the EMA updates."""
        return _ema_pairs(
            self.student_backbone, self.teacher_backbone
        ) + _ema_pairs(self.student_head, self.teacher_head)

    def _before_optimizer_step(self):
        """Sets the iteration's lr and weight decay; snapshots frozen state.

        Returns the values of the frozen variables and their slots (empty
        when nothing is ever frozen).
        """
        step = self.iteration
        optimizer = _inner_optimizer(self.optimizer)
        if self.schedule.learning_rate is not None:
            optimizer.learning_rate.assign(self.schedule.learning_rate_at(step))
        if self.schedule.weight_decay is not None and hasattr(
            optimizer, "scheduled_weight_decay"
        ):
            optimizer.scheduled_weight_decay.assign(
                self.schedule.weight_decay_at(step)
            )
        return [ops.copy(v) for v in self._step_variables.frozen]

    def _after_optimizer_step(self, snapshot):
        """Restores frozen state, runs the teacher EMA, advances the step."""
        schedule, step = self.schedule, self.iteration
        if self._step_variables.frozen:
            frozen = schedule.last_layer_frozen_at(step)
            for variable, old in zip(self._step_variables.frozen, snapshot):
                variable.assign(
                    ops.where(frozen, old, ops.convert_to_tensor(variable))
                )
        momentum = schedule.teacher_momentum_at(step)
        ema_update(self._step_variables.ema, momentum)
        finite = all_finite(self._step_variables.student)
        optimizer = _inner_optimizer(self.optimizer)
        logs = {
            "learning_rate": ops.convert_to_tensor(
                schedule.learning_rate_at(step)
                if schedule.learning_rate is not None
                else optimizer.learning_rate
            ),
            "teacher_momentum": momentum,
            "teacher_temperature": schedule.teacher_temperature_at(step),
            "weights_finite": ops.cast(finite, "float32"),
        }
        if schedule.weight_decay is not None:
            logs["weight_decay"] = schedule.weight_decay_at(step)
        else:
            logs["weight_decay"] = ops.convert_to_tensor(
                optimizer.weight_decay or 0.0, "float32"
            )
        if hasattr(self.optimizer, "dynamic_scale"):
            logs["loss_scale"] = ops.convert_to_tensor(
                self.optimizer.dynamic_scale
            )
        self.iteration.assign_add(1)
        return logs

    def _state_variables(self):
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
        )

    def _run_stateless(self, state, function, *args):
        """Runs `function` on JAX state; returns `(result, new state)`."""
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        variables = self._state_variables()
        mapping = []
        for group, values in zip(
            variables, (trainable, non_trainable, optimizer_vars)
        ):
            mapping.extend(zip(group, values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            result = function(*args)
        new = [[scope.get_current_value(v) for v in g] for g in variables]
        return result, (*new, metrics_vars)

    def train_step(self, *args):
        if self.schedule is None:
            raise ValueError(_NO_SCHEDULE)
        backend = keras.backend.backend()
        if backend == "jax":
            state, data = args
            snapshot, state = self._run_stateless(
                state, self._before_optimizer_step
            )
            logs, state = super().train_step(state, (self._crops(data),))
            extra, state = self._run_stateless(
                state, self._after_optimizer_step, snapshot
            )
            return {**logs, **extra}, state
        (data,) = args
        if backend == "torch":
            import torch

            with torch.no_grad():
                snapshot = self._before_optimizer_step()
            logs = super().train_step((self._crops(data),))
            with torch.no_grad():
                extra = self._after_optimizer_step(snapshot)
        else:
            snapshot = self._before_optimizer_step()
            logs = super().train_step((self._crops(data),))
            extra = self._after_optimizer_step(snapshot)
            return logs_for_replica_reduction({**logs, **extra})
        return {**logs, **extra}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow trainer under a tf.distribute strategy only. DINO is
        # built in __init__ and its optimizer in compile, so there is
        # nothing to build; Keras would read a batch from a throw-away
        # distributed iterator and reduce it over the replicas, which
        # fails for a tuple of crops under MultiWorkerMirroredStrategy.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, *args):
        if keras.backend.backend() == "jax":
            state, data = args
            return super().test_step(state, (self._crops(data),))
        (data,) = args
        return super().test_step((self._crops(data),))

    # --- compile / fit -------------------------------------------------

    def compile(self, optimizer=None, schedule=None, **kwargs):
        """Configures training with any Keras optimizer and the run schedule.

        Args:
            optimizer: a `keras.optimizers.Optimizer` instance: a stock one
                (`keras.optimizers.AdamW(clipnorm=3.0)`, `SGD`, a
                `LossScaleOptimizer`) or keras_dino's exact reference
                optimizers (`DINOAdamW`, `DINOSGD`, `LARS`).
            schedule: a `keras_dino.schedules.DINOSchedule` for the whole
                run, e.g. `DINOSchedule.paper(batch_size, steps_per_epoch,
                epochs)`.
            **kwargs: other `keras.Model.compile` arguments (no `loss`).
                `jit_compile` keeps Keras's meaning and default ("auto":
                XLA on JAX; off for TensorFlow on a machine without an
                accelerator; off on PyTorch). For long TensorFlow runs on
                a CPU, `jit_compile=True` is faster once its first step
                has compiled (`benchmarks/train_step.py` on 2 cores: 1.25x
                the images/s on CFG-C, 1.2x on CFG-T, and less memory).
                On PyTorch,
                `True` means `torch.compile`, which this step does not
                suit (warned).
        """
        if optimizer is None or isinstance(optimizer, str):
            raise ValueError(
                "DINO.compile needs an optimizer instance, e.g. "
                "keras_dino.optimizers.DINOAdamW() (the reference's AdamW) "
                "or keras.optimizers.AdamW(clipnorm=3.0)."
            )
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if not isinstance(schedule, DINOSchedule):
            raise ValueError(_NO_SCHEDULE)
        if kwargs.get("loss") is not None:
            raise ValueError(
                "DINO computes its own loss; do not pass `loss` to compile."
            )
        kwargs.pop("loss", None)
        if kwargs.get("jit_compile") is True and (
            keras.backend.backend() == "torch"
        ):
            warnings.warn(
                "jit_compile=True on the PyTorch backend wraps DINO's step "
                "in torch.compile: on 2 CPU cores (torch 2.13) its first "
                "step took over 14 minutes, dynamo recompiling layers up "
                "to its recompile limit. Use jit_compile=False (the "
                "default) on PyTorch.",
                stacklevel=2,
            )
        _check_optimizer_fits_schedule(_inner_optimizer(optimizer), schedule)
        super().compile(optimizer=optimizer, **kwargs)
        self.schedule = schedule
        inner = _inner_optimizer(self.optimizer)
        if schedule.weight_decay is not None and inner.weight_decay:
            # A stock optimizer's constant decay: the reference's exclusions.
            inner.exclude_from_weight_decay(
                var_list=[
                    v
                    for v in self.trainable_variables
                    if len(v.shape) <= 1 or v.name.endswith("bias")
                ]
            )
        self.optimizer.build(self.trainable_variables)
        self._step_variables.ema = self._ema_pairs()
        self._step_variables.student = [
            w for w in self.student_backbone.weights if w.trainable
        ] + [w for w in self.student_head.weights if w.trainable]
        frozen = []
        if schedule.freeze_last_layer_epochs > 0:
            frozen = [
                v for v in self.student_head.last_layer_variables if v.trainable
            ]
        self._step_variables.frozen = frozen + _slots_of(self.optimizer, frozen)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and self.schedule is not None:
            config["schedule"] = keras.saving.serialize_keras_object(
                self.schedule
            )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit` with a run-state check and a NaN guard.

        The run state (iteration, schedules, optimizer) continues from the
        model: calling `fit` again, with `initial_epoch`, after
        `BackupAndRestore` or on a reloaded `.keras` model continues the
        run. `fit` refuses an `initial_epoch` or a `steps_per_epoch` that
        disagree with the model's iteration and its schedule.
        """
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
        from keras_dino.models.presets import get_preset_loader

        loader = get_preset_loader("dino")
        return loader(preset, load_weights=load_weights, **kwargs)

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
                "augmentation": (
                    None
                    if self.augmentation is None
                    else keras.saving.serialize_keras_object(self.augmentation)
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = with_deserialized_backbone(config)
        if isinstance(config.get("augmentation"), dict):
            config["augmentation"] = keras.saving.deserialize_keras_object(
                config["augmentation"]
            )
        return cls(**config)

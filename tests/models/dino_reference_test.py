"""Three `fit` steps equal the reference DINO training step (plain torch).

Each pytest run has one Keras backend; all three are compared with the same
independent torch re-write of the reference (`tests/reference_torch.py`),
so TensorFlow, JAX and PyTorch agree with each other through it.
"""

import keras
import numpy as np
import pytest
import reference_torch as ref

from keras_dino import optimizers
from keras_dino.schedules import DINOSchedule

ATOL = 1e-4
BATCH = 4
EPOCHS = 3
CLIP = 0.3
FREEZE_EPOCHS = 2
# Per-256-image base learning rates (lr = base * 4 / 256) large enough for
# every weight to move visibly in three steps with each optimizer.
CASES = {
    "adamw": (optimizers.DINOAdamW, 0.2, None),
    "sgd": (optimizers.DINOSGD, 20.0, None),
    "lars": (optimizers.LARS, 2000.0, None),
    # The float16 path's loss scaling, forced on float32: a constant scale
    # (dynamic growth after 2000 steps only) must give the unscaled run.
    "adamw_loss_scale": (optimizers.DINOAdamW, 0.2, 2.0**12),
}


def _paths(layer, prefix=""):
    return [v.path[len(prefix) :] for v in layer.weights]


def _weights(layer, tiny, prefix=""):
    return {v.path[len(prefix) :]: tiny.np(v) for v in layer.weights}


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_match_reference(tiny, case):
    optimizer_class, base_lr, loss_scale = CASES[case]
    model = tiny.dino(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    crops = tiny.crops(batch=BATCH)
    backbone_w = _weights(model.student_backbone, tiny)
    head_w = _weights(model.student_head, tiny, "student_head/")
    state = ref.keras_to_reference(backbone_w, head_w)

    optimizer = optimizer_class(clip_norm=CLIP)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=loss_scale
        )
    model.compile(
        optimizer=optimizer,
        schedule=DINOSchedule.paper(
            batch_size=BATCH,
            steps_per_epoch=1,
            epochs=EPOCHS,
            learning_rate=base_lr,
            warmup_epochs=1,
            weight_decay=0.5,
            weight_decay_end=2.0,
            teacher_momentum=0.9,
            teacher_temperature=0.04,
            warmup_teacher_temperature=0.07,
            warmup_teacher_temperature_epochs=2,
            center_momentum=0.9,
            freeze_last_layer_epochs=FREEZE_EPOCHS,
        ),
    )
    history = model.fit(
        x=crops, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )

    arch = {
        "img_size": 32,
        "patch_size": 8,
        "dim": 16,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "out_dim": 64,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "nlayers": 3,
    }
    reference = ref.ReferenceDINO(
        state,
        arch,
        ncrops=len(crops),
        lr_schedule=ref.cosine_scheduler(
            base_lr * BATCH / 256, 1e-6, EPOCHS, 1, warmup_epochs=1
        ),
        wd_schedule=ref.cosine_scheduler(0.5, 2.0, EPOCHS, 1),
        momentum_schedule=ref.cosine_scheduler(0.9, 1.0, EPOCHS, 1),
        teacher_temp_schedule=np.concatenate(
            [np.linspace(0.07, 0.04, 2), np.full(EPOCHS - 2, 0.04)]
        ),
        clip_grad=CLIP,
        freeze_last_layer=FREEZE_EPOCHS,
        niter_per_ep=1,
        optimizer=case.split("_")[0],
        loss_scale=loss_scale,
    )
    ref_losses = [reference.train_step(crops) for _ in range(EPOCHS)]
    norms = np.concatenate(reference.grad_norms)
    # The clip threshold splits the gradients: both branches are covered.
    assert (norms > CLIP).any() and (norms < CLIP).any()

    np.testing.assert_allclose(history.history["loss"], ref_losses, atol=ATOL)

    s_bb, s_head = ref.reference_to_keras(
        reference.student.state_dict(),
        _paths(model.student_backbone),
        _paths(model.student_head, "student_head/"),
    )
    t_bb, t_head = ref.reference_to_keras(
        reference.teacher.state_dict(),
        _paths(model.teacher_backbone),
        _paths(model.teacher_head, "teacher_head/"),
    )
    pairs = [
        (model.student_backbone, "", s_bb, backbone_w),
        (model.student_head, "student_head/", s_head, head_w),
        (model.teacher_backbone, "", t_bb, backbone_w),
        (model.teacher_head, "teacher_head/", t_head, head_w),
    ]
    moved = 0
    for layer, prefix, expected, initial in pairs:
        for path, value in _weights(layer, tiny, prefix).items():
            np.testing.assert_allclose(
                value, expected[path], atol=ATOL, err_msg=path
            )
            moved += not np.allclose(value, initial[path], atol=1e-5)
    # Every weight but the fixed gains g moved: the comparison is not one
    # of untouched weights.
    assert moved == 2 * (len(backbone_w) + len(head_w) - 1)
    np.testing.assert_allclose(
        tiny.np(model.center), reference.loss.center.numpy(), atol=ATOL
    )
    # The last layer rested for two steps, then took one step: it moved.
    v = tiny.np(model.student_head.last_layer_v)
    assert np.abs(v - head_w["last_layer_v"]).max() > 1e-4

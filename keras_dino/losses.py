"""The DINO loss and center update as pure functions of tensors."""

from keras import ops


def _split_crops(logits, num_crops, name):
    total = logits.shape[0]
    if total is not None and total % num_crops:
        raise ValueError(
            f"{name} has {total} rows, which is not a multiple of the number "
            f"of crops ({num_crops}). Logits must be crop-major: "
            "(num_crops * batch, out_dim)."
        )
    return ops.reshape(logits, (num_crops, -1, logits.shape[-1]))


def teacher_probabilities(teacher_logits, center, teacher_temperature):
    """Centered and sharpened teacher output `softmax((t - c) / tau_t)`."""
    return ops.softmax((teacher_logits - center) / teacher_temperature, -1)


def dino_loss(
    student_logits,
    teacher_logits,
    center,
    teacher_temperature,
    student_temperature=0.1,
    num_global_crops=2,
    num_crops=None,
):
    """DINO cross-entropy between teacher and student crops.

    For every teacher (global) crop `i` and student crop `j` with `i != j`:
    `-sum(softmax((t_i - center) / tau_t) * log_softmax(s_j / tau_s))`,
    averaged over the batch and over the `G * C - G` pairs (`G` global crops,
    `C` student crops).

    Args:
        student_logits: `(num_crops * batch, out_dim)`, crop-major (all of
            crop 0, then crop 1, ...), global crops first.
        teacher_logits: `(num_global_crops * batch, out_dim)`, crop-major.
        center: `(1, out_dim)` center subtracted from the teacher logits.
        teacher_temperature: scalar teacher temperature.
        student_temperature: scalar student temperature.
        num_global_crops: number of teacher crops.
        num_crops: number of student crops; inferred from the shapes when
            they are static.

    Returns:
        Scalar loss.
    """
    if num_crops is None:
        rows_s, rows_t = student_logits.shape[0], teacher_logits.shape[0]
        if rows_s is None or rows_t is None:
            raise ValueError(
                "dino_loss cannot infer the number of student crops from "
                "logits of unknown batch size; pass num_crops."
            )
        batch = rows_t // num_global_crops
        if batch == 0 or rows_s % batch:
            raise ValueError(
                f"student_logits has {rows_s} rows, not a multiple of the "
                f"batch size {batch} implied by teacher_logits."
            )
        num_crops = rows_s // batch
    teacher = _split_crops(teacher_logits, num_global_crops, "teacher_logits")
    student = _split_crops(student_logits, num_crops, "student_logits")
    q = teacher_probabilities(teacher, center, teacher_temperature)
    log_p = ops.log_softmax(student / student_temperature, axis=-1)
    # pair_loss[i, j] = mean over the batch of -sum_k q_i * log p_j.
    batch_size = ops.cast(ops.shape(q)[1], q.dtype)
    pair_loss = -ops.einsum("gbk,cbk->gc", q, log_p) / batch_size
    same = ops.eye(num_global_crops, num_crops, dtype=pair_loss.dtype)
    num_terms = num_global_crops * num_crops - min(num_global_crops, num_crops)
    return ops.sum(pair_loss * (1.0 - same)) / num_terms


def update_center(center, teacher_logits, momentum=0.9):
    """`center * momentum + mean(teacher_logits, axis=0) * (1 - momentum)`.

    Args:
        center: `(1, out_dim)` current center.
        teacher_logits: `(rows, out_dim)` teacher logits of all global crops.
        momentum: scalar center momentum.

    Returns:
        The new `(1, out_dim)` center.
    """
    center = ops.convert_to_tensor(center)
    teacher_logits = ops.convert_to_tensor(teacher_logits)
    batch_center = ops.mean(teacher_logits, axis=0, keepdims=True)
    return center * momentum + batch_center * (1.0 - momentum)


def teacher_entropy(teacher_logits, center, teacher_temperature):
    """Mean entropy (nats) of the centered, sharpened teacher output.

    Near `ln(out_dim)`: uniform output (collapse to uniform). Near 0: one
    prototype wins for every image (collapse to one dimension).
    """
    z = (teacher_logits - center) / teacher_temperature
    q = ops.softmax(z, axis=-1)
    return -ops.mean(ops.sum(q * ops.log_softmax(z, axis=-1), axis=-1))

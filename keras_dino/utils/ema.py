"""The teacher's exponential moving average and the finite-weights check.

Both touch every weight of the student once per step. On the PyTorch
backend they run as `torch._foreach_*` calls over all weights at once
(one call per operation instead of a few Keras ops per weight, ~150
weights for ViT-T); elsewhere as `keras.ops` per weight, which XLA (JAX)
and the TensorFlow graph fuse on their own.
"""

import keras
from keras import ops


def ema_update(pairs, momentum):
    """`teacher = teacher * m + (1 - m) * student` for each pair.

    Args:
        pairs: list of `(student, teacher)` `keras.Variable` pairs.
        momentum: scalar tensor, the teacher momentum `m`.
    """
    if not pairs:
        return
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            teacher = [t.value for _, t in pairs]
            student = [s.value for s, _ in pairs]
            m = torch.as_tensor(momentum, dtype=teacher[0].dtype)
            torch._foreach_mul_(teacher, m)
            torch._foreach_add_(teacher, torch._foreach_mul(student, 1.0 - m))
        return
    for student, teacher in pairs:
        m = ops.cast(momentum, teacher.dtype)
        teacher.assign(teacher * m + (1.0 - m) * student)


def all_finite(variables):
    """A boolean scalar: no NaN or infinity in any of `variables`."""
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            sums = [torch.sum(v.value.float()) for v in variables]
            return torch.isfinite(torch.stack(sums)).all()
    sums = [ops.sum(ops.cast(v, "float32")) for v in variables]
    return ops.all(ops.isfinite(ops.stack(sums)))

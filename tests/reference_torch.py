"""An independent plain-PyTorch re-write of the reference DINO training step.

Written from facebookresearch/dino (`vision_transformer.py`, `utils.py`,
`main_dino.py`), not from `keras_dino`: the ViT with its position-embedding
interpolation by scale factor, `DINOHead` with a weight-normalised last
layer (`g * v / ||v||`), `MultiCropWrapper`, `DINOLoss` with its center,
`get_params_groups`, `torch.optim.AdamW`, `clip_gradients`,
`cancel_gradients_last_layer`, `cosine_scheduler` and the teacher EMA.

`keras_to_reference` / `reference_to_keras` map between the two weight
layouts (Keras Dense kernels are `(in, out)`, torch weights `(out, in)`;
Conv2D kernels `(p, p, 3, D)` vs `(D, 3, p, p)`; the fused qkv has the same
`[q | k | v]` layout in both).
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def cosine_scheduler(
    base_value,
    final_value,
    epochs,
    niter_per_ep,
    warmup_epochs=0,
    start_warmup_value=0,
):
    """`utils.cosine_scheduler` of the reference, verbatim in numpy."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(
            start_warmup_value, base_value, warmup_iters
        )
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters))
    )
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


# --- model -------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = (
            self.qkv(x)
            .reshape(b, n, 3, self.num_heads, c // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x), attn


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x, drop_prob, training):
    """Stochastic depth per sample, as the reference's `drop_path`."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype))
    return x.div(keep) * mask


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, drop_path_rate=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x, return_attention=False):
        y, attn = self.attn(self.norm1(x))
        if return_attention:
            return attn
        rate = self.drop_path_rate
        x = x + drop_path(y, rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), rate, self.training)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """The reference ViT; NCHW input.

    `drop_path_rate` (0 by default, as the numerical tests use it) decays
    linearly over the blocks from 0, as the reference's stochastic depth.
    """

    def __init__(
        self,
        img_size,
        patch_size,
        dim,
        depth,
        num_heads,
        mlp_ratio,
        drop_path_rate=0.0,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        rates = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, float(r)) for r in rates]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        class_pos_embed = self.pos_embed[:, 0]
        patch_pos_embed = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_embed.patch_size
        h0 = h // self.patch_embed.patch_size
        w0, h0 = w0 + 0.1, h0 + 0.1
        side = int(math.sqrt(n))
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
            mode="bicubic",
        )
        assert int(w0) == patch_pos_embed.shape[-2]
        assert int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(
            1, -1, dim
        )
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), 1)

    def prepare_tokens(self, x):
        b, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def get_last_selfattention(self, x):
        x = self.prepare_tokens(x)
        for i, blk in enumerate(self.blocks):
            if i < len(self.blocks) - 1:
                x = blk(x)
            else:
                return blk(x, return_attention=True)


class DINOHead(nn.Module):
    """MLP, L2 norm, then `weight_norm(Linear(bottleneck, out, bias=False))`.

    The weight norm is written out: weight = g * v / ||v|| per output row,
    parameters `last_layer.weight_g` (out, 1) and `last_layer.weight_v`
    (out, in), as `torch.nn.utils.weight_norm` names them.
    """

    def __init__(self, in_dim, out_dim, hidden_dim, bottleneck_dim, nlayers=3):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Module()
        self.last_layer.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.last_layer.weight_v = nn.Parameter(
            torch.zeros(out_dim, bottleneck_dim)
        )

    def last_weight(self):
        v = self.last_layer.weight_v
        return self.last_layer.weight_g * v / v.norm(dim=1, keepdim=True)

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return x @ self.last_weight().t()


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        if not isinstance(x, list):
            x = [x]
        sizes = torch.tensor([inp.shape[-1] for inp in x])
        idx_crops = torch.cumsum(
            torch.unique_consecutive(sizes, return_counts=True)[1], 0
        )
        start_idx, output = 0, torch.empty(0)
        for end_idx in idx_crops:
            out = self.backbone(torch.cat(x[start_idx:end_idx]))
            output = torch.cat((output, out))
            start_idx = end_idx
        return self.head(output)


class DINOLoss(nn.Module):
    def __init__(
        self,
        out_dim,
        ncrops,
        teacher_temp_schedule,
        student_temp=0.1,
        center_momentum=0.9,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule

    def forward(self, student_output, teacher_output, epoch):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)
        temp = float(self.teacher_temp_schedule[epoch])
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total_loss, n_loss_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(
                    -q * F.log_softmax(student_out[v], dim=-1), dim=-1
                )
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = batch_center / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (
            1 - self.center_momentum
        )


def get_params_groups(model):
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [
        {"params": regularized},
        {"params": not_regularized, "weight_decay": 0.0},
    ]


class LARS(torch.optim.Optimizer):
    """The reference's `utils.LARS`, re-written from its description.

    SGD with momentum whose update of every non-1-D parameter is scaled by
    the trust ratio `eta * ||p|| / ||g + wd * p||` (1 when either norm is
    0); weight decay is added to the gradient of non-1-D parameters.
    """

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001):
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "eta": eta,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim != 1:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(
                            update_norm > 0,
                            group["eta"] * param_norm / update_norm,
                            one,
                        ),
                        one,
                    )
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])


def clip_gradients(model, clip):
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


# --- weight layout ---------------------------------------------------------


def _t(x):
    return torch.tensor(np.asarray(x, np.float32))


def keras_to_reference(backbone_weights, head_weights):
    """A reference `state_dict` from `{path: array}` of a Keras model.

    `backbone_weights` maps `ViTBackbone` weight paths (e.g.
    `block_0/attention/qkv/kernel`), `head_weights` maps `DINOHead` ones
    (e.g. `dense_0/kernel`, `last_layer_v`), both without model prefixes.
    """
    sd = {}
    for path, w in backbone_weights.items():
        sd[_backbone_name(path)] = _to_torch_layout(path, w)
    for path, w in head_weights.items():
        sd["head." + _head_name(path)] = _to_torch_layout(path, w)
    return {k: _t(v) for k, v in sd.items()}


def reference_to_keras(state_dict, backbone_paths, head_paths):
    """The inverse of `keras_to_reference`, as `{path: array}` dicts."""
    sd = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    backbone = {
        p: _from_torch_layout(p, sd[_backbone_name(p)]) for p in backbone_paths
    }
    head = {
        p: _from_torch_layout(p, sd["head." + _head_name(p)])
        for p in head_paths
    }
    return backbone, head


def _backbone_name(path):
    names = {
        "patch_embedding/cls_token": "cls_token",
        "patch_embedding/position_embedding": "pos_embed",
        "patch_embedding/projection/kernel": "patch_embed.proj.weight",
        "patch_embedding/projection/bias": "patch_embed.proj.bias",
        "final_norm/gamma": "norm.weight",
        "final_norm/beta": "norm.bias",
    }
    if path in names:
        return "backbone." + names[path]
    block, layer, *rest = path.split("/")
    index = int(block.split("_")[1])
    sub = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention": "attn",
        "mlp_fc1": "mlp.fc1",
        "mlp_fc2": "mlp.fc2",
    }[layer]
    rest = [
        {"gamma": "weight", "beta": "bias", "kernel": "weight"}.get(r, r)
        for r in rest
    ]
    return "backbone." + ".".join([f"blocks.{index}", sub, *rest])


def _head_name(path):
    if path == "last_layer_v":
        return "last_layer.weight_v"
    if path == "last_layer_g":
        return "last_layer.weight_g"
    layer, kind = path.split("/")
    index = int(layer.split("_")[1])
    return f"mlp.{2 * index}.{ {'kernel': 'weight'}.get(kind, kind) }"


def _to_torch_layout(path, w):
    w = np.asarray(w)
    if path.endswith("projection/kernel"):
        return w.transpose(3, 2, 0, 1)
    if path.endswith("kernel") or path.startswith("last_layer"):
        return w.T
    return w


def _from_torch_layout(path, w):
    if path.endswith("projection/kernel"):
        return w.transpose(2, 3, 1, 0)
    if path.endswith("kernel") or path.startswith("last_layer"):
        return w.T
    return w


# --- training ----------------------------------------------------------------


class ReferenceDINO:
    """Student, teacher, loss and optimiser of `main_dino.py`, in miniature.

    Args:
        state_dict: initial weights for student and teacher (see
            `keras_to_reference`), or None for torch's own initialisation
            (the speed benchmark).
        arch: dict with `img_size, patch_size, dim, depth, num_heads,
            mlp_ratio, out_dim, hidden_dim, bottleneck_dim, nlayers`.
        ncrops: number of crops per image.
        lr_schedule, wd_schedule, momentum_schedule: per-iteration arrays.
        teacher_temp_schedule: per-epoch array.
        clip_grad: per-parameter gradient-norm clip (0 disables).
        freeze_last_layer: epochs during which the last layer is frozen.
        norm_last_layer: fix `weight_g` (not trained).
        niter_per_ep: iterations per epoch.
        optimizer: "adamw" (`torch.optim.AdamW`), "sgd"
            (`torch.optim.SGD(momentum=0.9)`) or "lars" (`LARS`), as
            `main_dino.py` builds them.
        loss_scale: optional constant loss scale, applied as
            `torch.cuda.amp.GradScaler` does (scaled backward, gradients
            unscaled before clipping, the step skipped on inf/NaN).
        drop_path_rate: the student's stochastic depth (the reference
            trains with 0.1; the numerical tests use 0).
    """

    def __init__(
        self,
        state_dict,
        arch,
        ncrops,
        lr_schedule,
        wd_schedule,
        momentum_schedule,
        teacher_temp_schedule,
        clip_grad,
        freeze_last_layer,
        niter_per_ep,
        norm_last_layer=True,
        student_temp=0.1,
        center_momentum=0.9,
        optimizer="adamw",
        loss_scale=None,
        drop_path_rate=0.0,
    ):
        torch.manual_seed(0)
        self.student = self._build(arch, norm_last_layer, drop_path_rate)
        self.teacher = self._build(arch, norm_last_layer)
        if state_dict is not None:
            self.student.load_state_dict(state_dict)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.loss = DINOLoss(
            arch["out_dim"],
            ncrops,
            teacher_temp_schedule,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        groups = get_params_groups(self.student)
        if optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, eps=1e-8)
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=0, momentum=0.9)
        else:
            self.optimizer = LARS(groups)
        self.loss_scale = loss_scale
        self.lr_schedule = lr_schedule
        self.wd_schedule = wd_schedule
        self.momentum_schedule = momentum_schedule
        self.clip_grad = clip_grad
        self.freeze_last_layer = freeze_last_layer
        self.niter_per_ep = niter_per_ep
        self.it = 0
        self.grad_norms = []

    @staticmethod
    def _build(arch, norm_last_layer, drop_path_rate=0.0):
        backbone = VisionTransformer(
            arch["img_size"],
            arch["patch_size"],
            arch["dim"],
            arch["depth"],
            arch["num_heads"],
            arch["mlp_ratio"],
            drop_path_rate,
        )
        head = DINOHead(
            arch["dim"],
            arch["out_dim"],
            arch["hidden_dim"],
            arch["bottleneck_dim"],
            arch["nlayers"],
        )
        if norm_last_layer:
            head.last_layer.weight_g.requires_grad = False
        return MultiCropWrapper(backbone, head)

    def train_step(self, crops_nhwc):
        """One iteration of `train_one_epoch`; returns the loss.

        `crops_nhwc`: numpy `(batch, H, W, 3)` crops, or torch tensors
        already in the reference's NCHW layout (used as they are).
        """
        it = self.it
        epoch = it // self.niter_per_ep
        images = [
            c
            if isinstance(c, torch.Tensor)
            else torch.from_numpy(np.ascontiguousarray(c.transpose(0, 3, 1, 2)))
            for c in crops_nhwc
        ]
        for i, param_group in enumerate(self.optimizer.param_groups):
            param_group["lr"] = float(self.lr_schedule[it])
            if i == 0:
                param_group["weight_decay"] = float(self.wd_schedule[it])
        teacher_output = self.teacher(images[:2])
        student_output = self.student(images)
        loss = self.loss(student_output, teacher_output, epoch)
        self.optimizer.zero_grad()
        finite = True
        if self.loss_scale:
            (loss * self.loss_scale).backward()
            for p in self.student.parameters():
                if p.grad is not None:
                    p.grad.data.div_(self.loss_scale)
                    finite = finite and bool(torch.isfinite(p.grad).all())
        else:
            loss.backward()
        if self.clip_grad:
            self.grad_norms.append(clip_gradients(self.student, self.clip_grad))
        cancel_gradients_last_layer(epoch, self.student, self.freeze_last_layer)
        if finite:
            self.optimizer.step()
        with torch.no_grad():
            m = float(self.momentum_schedule[it])
            for param_q, param_k in zip(
                self.student.parameters(), self.teacher.parameters()
            ):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        self.it += 1
        return loss.item()

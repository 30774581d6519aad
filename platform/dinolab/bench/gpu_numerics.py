"""The GPU check's numerics: one DINO training step, the same weights and batch, in several precisions/devices.

The step is ``bench.step.TrainingStep`` (``train.step.train_step`` as the loop runs it: teacher and student
forward under autocast, DINO loss, backward through the grad scaler, per-parameter clipping, fused AdamW,
EMA teacher, centre update) on ViT-S/16 with the paper's crops (2x224 + 10x96), a small batch, and
drop path off (its random masks would differ between runs and devices). The networks are built on the
CPU from one seed and then moved, so every variant starts from identical weights; the views are drawn
once on the CPU and copied to each device.

Compared (each against the fp32 CUDA step):

- bf16 autocast: the loss within ``BF16_LOSS_RTOL``; every gradient finite; the gradients' direction
  (median over parameters of the cosine between the two runs' gradients) at least ``BF16_GRAD_COS``.
- fp16 autocast with the grad scaler, ``FP16_STEPS`` steps on the batch: every loss finite, the scaler
  applied at least one optimizer step (an overflowing first step is skipped by design), parameters finite,
  the first loss within ``BF16_LOSS_RTOL`` of fp32.
- fp32 on the CPU: the loss within ``FP32_LOSS_RTOL``, gradient direction at least ``FP32_GRAD_COS``.
  CUDA runs convolutions (the patch embedding) in TF32 by default, hence not bit-equality.

The tolerances sit far below what a wrong step produces (a lost centre update, a dtype cast in the wrong
place, gradients of the wrong network change the loss by O(1) and the gradient direction entirely) and
far above what rounding did on a CPU: with CPU bf16 autocast against fp32 (ViT-S/16, batch 2, 2x224 + 4x96,
2026-12-03) the loss moved by 9e-6 (relative) and the gradient cosine was 0.99995 (median; min 0.99989).
TF32 (10-bit mantissa) rounds finer than bf16 (7-bit), hence the tighter fp32 tolerances.
"""

from __future__ import annotations

import math
import statistics

import torch

from .gpu_check import Check

BF16_LOSS_RTOL = 5e-3
BF16_GRAD_COS = 0.99
FP32_LOSS_RTOL = 1e-4
FP32_GRAD_COS = 0.999
FP16_STEPS = 5  # the scaler starts at 2^16 and halves on each overflowing step, which it skips
OVERRIDES = {
    "model": {"arch": "vit_small", "patch_size": 16, "drop_path_rate": 0.0},
    "crops": {"global_size": 224, "local_size": 96, "local_number": 10},
    "train": {"batch_size": 4},
}


def make_step(precision: str, device: torch.device, crops: list[torch.Tensor], spec: dict = OVERRIDES):
    """A TrainingStep of ``spec`` (seed 0 weights) in ``precision`` on ``device``, fed copies of ``crops``."""
    from .step import TrainingStep, step_config

    overrides = {k: dict(v) for k, v in spec.items()}
    overrides["train"]["precision"] = precision
    step = TrainingStep(step_config(overrides, device), device)  # train.seed 0
    step.crops = [c.to(device) for c in crops]  # the same views for every variant (TrainingStep drew its own)
    return step


def views(spec: dict = OVERRIDES, seed: int = 0) -> list[torch.Tensor]:
    """The batch: 2 global (B, 3, G, G) and the local (B, 3, L, L) normalised views of ``spec``, on the CPU."""
    g = torch.Generator().manual_seed(seed)
    c, batch = spec["crops"], spec["train"]["batch_size"]
    sides = [c["global_size"]] * 2 + [c["local_size"]] * c["local_number"]
    return [torch.randn(batch, 3, s, s, generator=g) for s in sides]


def gradients(step) -> dict[str, torch.Tensor]:
    """The student's gradients after a step (clipped per parameter, which leaves their direction), fp32, CPU."""
    return {n: p.grad.detach().float().cpu() for n, p in step.setup.student.named_parameters() if p.grad is not None}


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def grad_direction(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Per-parameter cosine between two runs' gradients: median, min and the parameter at the min.

    Parameters whose gradient is zero in both runs carry no direction and are left out.
    """
    cos = {}
    for name in sorted(set(a) & set(b)):
        x, y = a[name].flatten().double(), b[name].flatten().double()
        nx, ny = x.norm(), y.norm()
        if nx == 0 and ny == 0:
            continue
        cos[name] = float(x @ y / (nx * ny)) if nx > 0 and ny > 0 else 0.0
    if not cos:
        return {"median": float("nan"), "min": float("nan"), "worst": None, "parameters": 0, "missing": len(set(a) ^ set(b))}
    worst = min(cos, key=cos.get)
    return {"median": statistics.median(cos.values()), "min": cos[worst], "worst": worst, "parameters": len(cos),
            "missing": len(set(a) ^ set(b))}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def run_fp16(device: torch.device, crops: list[torch.Tensor], spec: dict = OVERRIDES) -> dict:
    """FP16_STEPS fp16 steps with the grad scaler on one batch: losses, scale after each, steps applied."""
    from dinolab.train.step import NonFiniteLoss

    step = make_step("fp16", device, crops, spec)
    probe = next(p for p in step.setup.student.parameters() if p.requires_grad)
    losses, scales, applied = [], [], 0
    for _ in range(FP16_STEPS):
        before = probe.detach().clone()
        try:
            losses.append(step())
        except NonFiniteLoss:  # raised before any update: recorded, and the check fails on it
            losses.append(float("nan"))
        scales.append(float(step.setup.scaler.get_scale()))
        applied += int(not torch.equal(before, probe.detach()))
    params_finite = all_finite(p.detach() for p in step.setup.student.parameters())
    return {"losses": losses, "scales": scales, "steps_applied": applied, "params_finite": params_finite,
            "scaler_enabled": step.setup.scaler.is_enabled()}


def numerics(device: torch.device, spec: dict = OVERRIDES) -> tuple[list[Check], dict]:
    """The comparisons of the module doc on ``device``, for the step ``spec`` (OVERRIDES); returns (checks, figures).

    On a CPU (the tests) autocast is off, so the "bf16" and "fp16" steps are fp32 ones and the grad scaler is
    disabled: the fp16 check fails there, as it should.
    """
    crops = views(spec)
    checks: list[Check] = []
    fig: dict = {"spec": spec, "tf32": {
        "matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}

    s32 = make_step("fp32", device, crops, spec)
    loss32 = s32()
    g32 = gradients(s32)
    del s32
    fig["fp32_loss"] = loss32
    checks.append(Check("fp32 step: loss and gradients finite", math.isfinite(loss32) and all_finite(g32.values()),
                        f"loss {loss32:.6g}, {len(g32)} gradients"))

    s16 = make_step("bf16", device, crops, spec)
    loss_bf = s16()
    g_bf = gradients(s16)
    params_bf = all_finite(p.detach() for p in s16.setup.student.parameters())
    del s16
    d = grad_direction(g_bf, g32)
    fig.update(bf16_loss=loss_bf, bf16_loss_rel=rel(loss_bf, loss32), bf16_grad_cos=d)
    checks.append(Check("bf16 vs fp32: loss", rel(loss_bf, loss32) <= BF16_LOSS_RTOL,
                        f"{loss_bf:.6g} vs {loss32:.6g}: rel {rel(loss_bf, loss32):.2e} (tol {BF16_LOSS_RTOL:g})"))
    checks.append(Check("bf16 step: gradients and parameters finite", all_finite(g_bf.values()) and params_bf, f"{len(g_bf)} gradients"))
    checks.append(Check("bf16 vs fp32: gradient direction", d["median"] >= BF16_GRAD_COS and not d["missing"],
                        f"median cos {d['median']:.4f} (>= {BF16_GRAD_COS}), min {d['min']:.4f} at {d['worst']}"))

    f16 = run_fp16(device, crops, spec)  # a non-finite fp16 loss is recorded as nan, so the CPU comparison still runs
    fig["fp16"] = f16
    ok = all(math.isfinite(v) for v in f16["losses"]) and f16["steps_applied"] >= 1 and f16["params_finite"] and f16["scaler_enabled"]
    checks.append(Check("fp16 + grad scaler: steps", ok,
                        f"losses {', '.join(f'{v:.5g}' for v in f16['losses'])}; scale {', '.join(f'{v:g}' for v in f16['scales'])}; "
                        f"{f16['steps_applied']}/{FP16_STEPS} optimizer steps applied"))
    checks.append(Check("fp16 vs fp32: loss", rel(f16["losses"][0], loss32) <= BF16_LOSS_RTOL,
                        f"rel {rel(f16['losses'][0], loss32):.2e} (tol {BF16_LOSS_RTOL:g})"))

    cpu = make_step("fp32", torch.device("cpu"), crops, spec)
    loss_cpu = cpu()
    g_cpu = gradients(cpu)
    del cpu
    d = grad_direction(g32, g_cpu)
    fig.update(cpu_loss=loss_cpu, cpu_loss_rel=rel(loss32, loss_cpu), cpu_grad_cos=d)
    checks.append(Check(f"fp32 {device.type} vs CPU: loss", rel(loss32, loss_cpu) <= FP32_LOSS_RTOL,
                        f"{loss32:.7g} vs {loss_cpu:.7g}: rel {rel(loss32, loss_cpu):.2e} (tol {FP32_LOSS_RTOL:g})"))
    checks.append(Check(f"fp32 {device.type} vs CPU: gradient direction", d["median"] >= FP32_GRAD_COS and not d["missing"],
                        f"median cos {d['median']:.5f} (>= {FP32_GRAD_COS}), min {d['min']:.4f} at {d['worst']}"))
    return checks, fig

"""Training-step figures: one DINO step against the same step's matrix products timed alone.

Step: ``dinolab.train.step.train_step`` on the set-up ``dinolab.train.setup.build_training`` makes of the config,
what ``dinolab.train.loop.train`` does per iteration on views already on the device (data loading and
augmentation are the augmentation figure's business): the scheduled lr / weight decay, teacher on the 2 global
views, student on all views, DINO loss (and EsViT's region loss when configured) with the diagnostics the loop
logs, backward, per-parameter clipping, AdamW step, EMA teacher update, center update. CPU runs fp32; CUDA runs bf16 autocast (``train.precision=bf16``).

Baseline: the step's matrix products alone. One step runs under a dispatch mode that records every call
of an op torch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``) has a formula for: mm, addmm,
bmm, baddbmm, convolution (+ backward) and the fused attention kernels; its shapes, strides and dtypes are
kept. ``ProductReplay`` calls the same ops, in the same order, on random tensors of the same layouts: one
pass is "the products alone" (inputs aliased as in the step). Repeats of the step and of the replay are interleaved, so load from other
processes hits both alike. The FLOPs are counted, never estimated: FlopCounterMode over one step (with
torch's own attention formulas registered for the CPU flash-attention kernels, which its registry lacks),
and the replay is counted again to check that it holds the same FLOPs.

Large GEMM: the rate of an n x n x n fp32 matmul (and bf16 on CUDA, the rate model FLOP utilisation is
read against).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from dinolab.config import build_config
from dinolab.config.schema import ExperimentConfig
from dinolab.track import contract

from .context import BenchContext
from .record import PeakMemory, Record, summary, time_call

log = logging.getLogger(__name__)

STEP_TARGET = 1.25  # the whole step within 1.25x of its matrix products alone
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class StepSpec:
    title: str
    model: dict
    crops: tuple[int, int, int]  # global side, local side, local count
    batch: int
    quick_batch: int
    repeats: int = 9  # per-repeat ratios on this shared 2-core host spread 1.05-1.5: the median needs many
    cuda_only: bool = False


# The step figures (paper head: out_dim 65536, the schema's default).
STEP_SPECS: dict[str, StepSpec] = {
    "step_vit_tiny4": StepSpec("training step: ViT-Tiny/4, crops 2x32 + 6x16, batch 64, out_dim 65536",
                               {"arch": "vit_tiny", "patch_size": 4}, (32, 16, 6), batch=64, quick_batch=2),
    "step_vit_tiny16_paper": StepSpec("training step: ViT-Tiny/16, paper crops 2x224 + 10x96, batch 16, out_dim 65536",
                                      {"arch": "vit_tiny", "patch_size": 16}, (224, 96, 10), batch=16, quick_batch=2,
                                      repeats=7),
    "step_vit_small16_paper": StepSpec("training step: ViT-S/16, paper crops 2x224 + 10x96, batch 64 per GPU, out_dim 65536, bf16",
                                       {"arch": "vit_small", "patch_size": 16}, (224, 96, 10), batch=64, quick_batch=8,
                                       cuda_only=True),
}


# ----------------------------------------------------------------------------- FLOP counting


def _cpu_attention_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels (torch's own sdpa formulas; its registry lacks these ops)."""
    from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    out = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if fwd is not None and fwd not in flop_registry:
        def fwd_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

        out[fwd] = fwd_flops
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if bwd is not None and bwd not in flop_registry:
        def bwd_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        out[bwd] = bwd_flops
    return out


def flop_counter():
    """torch's FlopCounterMode (no printing), CPU attention kernels included."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's layout, without its values; ``address`` (its data pointer when recorded) keeps the step's aliasing."""

    size: tuple
    stride: tuple
    dtype: torch.dtype
    device: str
    address: int = 0

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype, str(t.device), t.data_ptr())


def _spec(x: Any) -> Any:
    return TensorSpec.of(x) if isinstance(x, torch.Tensor) else x


class ProductRecorder(TorchDispatchMode):
    """Records every call of an op in ``formulas`` (FlopCounterMode's registry): (op, arg specs, kwarg specs, flops)."""

    def __init__(self, formulas: dict) -> None:
        super().__init__()
        self.formulas = formulas
        self.calls: list[tuple[Any, Any, Any, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func.overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.calls.append((func, tree_map(_spec, args), tree_map(_spec, kwargs), flops))
        return out

    @property
    def flops(self) -> int:
        return sum(c[3] for c in self.calls)

    def by_op(self) -> dict[str, dict]:
        """{op name: {"calls", "flops"}}."""
        calls: Counter = Counter()
        flops: Counter = Counter()
        for func, _, _, f in self.calls:
            name = str(func.overloadpacket).replace("aten.", "")
            calls[name] += 1
            flops[name] += f
        return {k: {"calls": calls[k], "flops": flops[k]} for k in sorted(calls)}


def _materialise(spec: TensorSpec) -> torch.Tensor:
    """A random tensor with ``spec``'s exact size, strides and dtype (strided views of one storage)."""
    if spec.size and min(spec.size) == 0:
        return torch.empty_strided(spec.size, spec.stride, dtype=spec.dtype, device=spec.device)
    extent = 1 + sum((n - 1) * abs(s) for n, s in zip(spec.size, spec.stride))
    base = torch.empty(extent, dtype=spec.dtype, device=spec.device)
    if spec.dtype.is_floating_point:
        base.normal_()
    else:
        base.zero_()
    return base.as_strided(spec.size, spec.stride)


class ProductReplay:
    """The recorded products, called in order on random tensors of the recorded layouts.

    Inputs that were the same tensor in the step (same address and layout: a layer's weight in the forward and
    backward passes, an activation read twice) are the same tensor here, and only those, so the replay's
    memory traffic and cache reuse follow the step's rather than one small buffer per shape.
    """

    def __init__(self, calls: list) -> None:
        buffers: dict[TensorSpec, torch.Tensor] = {}

        def real(x):
            if isinstance(x, TensorSpec):
                if x not in buffers:
                    buffers[x] = _materialise(x)
                return buffers[x]
            return x

        self.program = [(func, tree_map(real, args), tree_map(real, kwargs)) for func, args, kwargs, _ in calls]

    @torch.no_grad()
    def __call__(self) -> None:
        for func, args, kwargs in self.program:
            func(*args, **kwargs)


# ----------------------------------------------------------------------------- the step


class TrainingStep:
    """One steady-state DINO training step as ``train()`` runs it (its set-up, ``build_training``), on fixed random
    views (see the module doc): a step past the head's frozen first epoch(s)."""

    def __init__(self, cfg: ExperimentConfig, device: torch.device) -> None:
        from dinolab.train.loop import seed_everything
        from dinolab.train.setup import build_training

        self.cfg, self.device = cfg, device
        seed_everything(cfg.train.seed)
        self.setup = build_training(cfg, steps_per_epoch=1, device=device)  # step i = epoch i
        self.step = min(cfg.train.freeze_last_layer, cfg.train.epochs - 1)
        c = cfg.crops
        sides = [c.global_size] * 2 + [c.local_size] * c.local_number
        # Normalised views: (B, 3, S, S) each, what the loader + photometric stage hand the loop.
        self.crops = [torch.randn(cfg.train.batch_size, 3, s, s, device=device) for s in sides]

    def __call__(self) -> float:
        from dinolab.train.step import train_step

        self.setup.student.train()
        return train_step(self.setup, self.crops, self.step).loss


def step_config(overrides: dict, device: torch.device) -> ExperimentConfig:
    """The schema's defaults (DINO's) with ``overrides`` (nested dict); fp32 on CPU, bf16 autocast on CUDA."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in overrides.items()}
    train = data.setdefault("train", {})
    train.setdefault("precision", "bf16" if device.type == "cuda" else "fp32")
    train["device"] = str(device)
    train["progress"] = False
    return build_config(data, source="benchmark step")


def spec_overrides(spec: StepSpec, quick: bool) -> dict:
    g, l, n = spec.crops
    return {
        "model": dict(spec.model),
        "crops": {"global_size": g, "local_size": l, "local_number": n},
        "train": {"batch_size": spec.quick_batch if quick else spec.batch},
    }


# ----------------------------------------------------------------------------- matmul rate


def matmul_rate(ctx: BenchContext, dtype: torch.dtype) -> dict:
    """TFLOP/s of an n x n x n matmul on the context's device (measured once per run, then cached)."""
    key = ("matmul", str(dtype))
    if key in ctx.cache:
        return ctx.cache[key]
    ctx.reset_threads()
    device = ctx.device
    if ctx.cuda:
        n, calls = (4096, 10) if ctx.quick else (8192, 20)
    else:
        n, calls = (512, 4) if ctx.quick else (2048, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(calls):
            torch.mm(a, b)

    run()  # warm-up
    rates = [2.0 * n**3 * calls / time_call(run, device) / 1e12 for _ in range(ctx.reps(5, 2))]
    out = {"n": n, "dtype": DTYPE_NAMES.get(dtype, str(dtype)), "calls": calls, "tflops": summary(rates), "values": rates}
    ctx.cache[key] = out
    return out


def gemm_figure(ctx: BenchContext, dtype: torch.dtype = torch.float32) -> Record:
    r = matmul_rate(ctx, dtype)
    name = r["dtype"]
    config = {"n": r["n"], "dtype": name, "calls_per_repeat": r["calls"], "threads": ctx.threads}
    if ctx.cuda:
        config["allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return ctx.record(
        name=f"gemm_{name}", title=f"large GEMM: {r['n']}x{r['n']}x{r['n']} {name} matmul rate", config=config,
        value=r["tflops"]["median"], unit="TFLOP/s", baseline=None, baseline_desc="none (a reference rate)",
        ratio=None, ratio_desc="", target="reference for the step figures (no target)", passed=None,
        repeats=len(r["values"]), spread=r["tflops"], baseline_spread={}, peak_memory_mb=None, peak_memory_kind="",
    )


# ----------------------------------------------------------------------------- the figure


def measure_step(ctx: BenchContext, name: str, title: str, overrides: dict, repeats: Optional[int] = None) -> Record:
    """Time the step and its products alone (interleaved repeats); FLOPs, rates, peak memory."""
    ctx.reset_threads()
    device = ctx.device
    cfg = step_config(overrides, device)
    repeats = repeats or ctx.reps(5, 2)
    with PeakMemory(device) as mem:  # the training memory: networks, optimizer state, activations
        step = TrainingStep(cfg, device)
        for _ in range(1 if ctx.quick else 2):
            step()  # warm-up (allocator, kernels, AdamW state)
        counter = flop_counter()
        with counter:
            step()
        recorder = ProductRecorder(counter.flop_registry)
        with recorder:
            step()
    flops = int(counter.get_total_flops())
    if flops <= 0:
        raise RuntimeError(f"{name}: FlopCounterMode counted no FLOPs in a training step")
    replay = ProductReplay(recorder.calls)
    check = flop_counter()
    with check:
        replay()  # warm-up, and the check that the replay holds the step's FLOPs
    replay_flops = int(check.get_total_flops())
    if replay_flops != flops or recorder.flops != flops:
        log.warning("%s: FLOPs differ: step %d, recorded %d, replay %d", name, flops, recorder.flops, replay_flops)

    step_s, prod_s = [], []
    for _ in range(repeats):
        step_s.append(time_call(step, device))
        prod_s.append(time_call(replay, device))
    s, p = summary(step_s), summary(prod_s)
    ratios = [a / b for a, b in zip(step_s, prod_s)]
    batch = cfg.train.batch_size
    c = cfg.crops
    extra = {
        "flops_per_step": flops,
        "flops_recorded": recorder.flops,
        "flops_replayed": replay_flops,
        "product_calls": len(recorder.calls),
        "products": recorder.by_op(),
        "step_tflops": flops / s["median"] / 1e12,
        "products_tflops": flops / p["median"] / 1e12,
        contract.IMAGES_PER_S: batch / s["median"],
        "ratio_per_repeat": summary(ratios),
    }
    fp32 = matmul_rate(ctx, torch.float32)
    extra["gemm_fp32_tflops"] = fp32["tflops"]["median"]
    if ctx.cuda:
        bf16 = matmul_rate(ctx, torch.bfloat16)
        extra["gemm_bf16_tflops"] = bf16["tflops"]["median"]
        extra["mfu_vs_bf16_gemm"] = extra["step_tflops"] / extra["gemm_bf16_tflops"]
    else:
        extra["utilisation_vs_fp32_gemm"] = extra["step_tflops"] / extra["gemm_fp32_tflops"]
    config = {
        "arch": cfg.model.arch, "patch_size": cfg.model.patch_size, "crops": f"2x{c.global_size} + {c.local_number}x{c.local_size}",
        "batch": batch, "out_dim": cfg.dino.out_dim, "precision": "bf16 autocast" if step.setup.amp_dtype is not None else "fp32",
        "threads": ctx.threads, "device": str(device),
    }
    ratio = s["median"] / p["median"]
    return ctx.record(
        name=name, title=title, config=config, value=s["median"], unit="s/step", baseline=p["median"],
        baseline_desc="the step's FLOP-counted products (mm/addmm/bmm/conv/attention), same shapes, timed alone",
        ratio=ratio, ratio_desc="step / products alone (median times)", target=f"ratio <= {STEP_TARGET}",
        passed=ratio <= STEP_TARGET, repeats=repeats, spread=s, baseline_spread=p, peak_memory_mb=mem.mb,
        peak_memory_kind=mem.kind, extra=extra,
    )


def step_figure(ctx: BenchContext, name: str) -> Optional[Record]:
    spec = STEP_SPECS[name]
    if spec.cuda_only and not ctx.cuda:
        log.info("%s: needs CUDA; skipped on this machine", name)
        return None
    title = spec.title + (f" (quick: batch {spec.quick_batch})" if ctx.quick else "")
    return measure_step(ctx, name, title, spec_overrides(spec, ctx.quick), ctx.reps(spec.repeats, 2))

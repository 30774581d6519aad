"""``scripts/gpu_check.sh``: the GPU path checked in one run on one CUDA device (about 5 minutes), without Ray
or MLflow, everything it measures written under one folder.

Steps, in order (a step that raises is recorded as FAIL and the next one runs):

  device    device, driver, torch / CUDA / cuDNN versions, free memory, the packages dinolab imports (gpu_device.py)
  bench     ``dinolab bench``'s CUDA figures: large GEMM fp32 and bf16; the ViT-S/16 paper-crops training step in
            bf16 (images/s, model FLOP utilisation against the device's dense bf16 datasheet peak, peak memory);
            the augmentation with its stage 2 on the device against the CPU PIL recipe (step.py, augment.py)
  numerics  one DINO step fp32 vs bf16 from the same weights and batch, fp16 with the grad scaler, fp32 CPU vs
            CUDA, each within a stated tolerance (gpu_numerics.py)
  training  experiments/cifar10_vit_tiny.yaml shortened to about 2 minutes through the training loop with a
            FileReporter: k-NN per epoch against random init, the cuda_peak_mb / gpu_hours a trial logs
            (gpu_training.py)

A step's status: PASS (every required check held), FAIL (a required check failed, or the step raised),
NO-CUDA (it needs a CUDA device and there is none: it did not run). Checks marked ``info`` (the bench's
speed targets, k-NN gain of a 2-minute run) are shown and recorded, never counted.
Exit code: 0 every step PASS; 1 a step FAIL; 3 none failed but a step could not run for lack of CUDA;
2 bad arguments.

Output folder (``--out``; default ``$OUT`` when set, else ./gpu_check_out):
  gpu_check.json               every step's checks and figures, the machine, the command, the exit code
  steps/<step>.json            each step's result as soon as it ends (kept when a run is cut short)
  summary.txt                  the table printed at the end
  gpu_check.log                the log
  bench_results/<machine>.json the bench figures as ``dinolab bench`` records: copy into bench/results/ and
                               run ``dinolab bench --assemble`` to show them in BENCHMARKS.md
  training/                    the short training's metrics.jsonl, tags.json, attention images
Scratch (checkpoints, unpacked data) goes to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from dinolab.track import contract

log = logging.getLogger("dinolab.gpu_check")

PASS, FAIL, NO_CUDA = "PASS", "FAIL", "NO-CUDA"
EXIT = {PASS: 0, FAIL: 1, NO_CUDA: 3}
TRAIN_EPOCHS, TRAIN_STEPS, TRAIN_MAX_S = 12, 40, 240.0
AUGMENT_REPEATS = 3  # the bench's 9 are for a noisy shared CPU; 3 keep this step within its minute


@dataclass
class Check:
    name: str
    passed: Optional[bool]  # None: could not be evaluated
    detail: str = ""
    required: bool = True  # False: shown and recorded, never counted ("info")

    @property
    def result(self) -> str:
        if not self.required:
            return "info" if self.passed is None else f"info:{'yes' if self.passed else 'no'}"
        return PASS if self.passed else FAIL


@dataclass
class StepResult:
    name: str
    status: str
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StepResult":
        return cls(**{**data, "checks": [Check(**c) for c in data.get("checks", [])]})


def step_status(checks: list[Check], error: str = "", no_cuda: bool = False) -> str:
    """FAIL on an error or a failed required check; else NO-CUDA when the step could not run; else PASS
    when at least one required check held (a step that checked nothing has not passed)."""
    required = [c for c in checks if c.required]
    if error or any(not c.passed for c in required):
        return FAIL
    if no_cuda:
        return NO_CUDA
    return PASS if required else FAIL


def exit_code(results: list[StepResult]) -> int:
    statuses = {r.status for r in results}
    for status in (FAIL, NO_CUDA):
        if status in statuses:
            return EXIT[status]
    return 0


@dataclass
class Context:
    out: Path
    scratch: Path
    args: argparse.Namespace
    command: str
    cuda: bool
    shared: dict = field(default_factory=dict)  # what a later step reads from an earlier one


@dataclass(frozen=True)
class Step:
    name: str
    needs_cuda: bool
    describe: Callable[[argparse.Namespace], str]
    run: Callable[[Context], tuple[list[Check], dict]]


# ----------------------------------------------------------------------------- the steps


def device_step(ctx: Context) -> tuple[list[Check], dict]:
    from .gpu_device import MIN_FREE_GIB, device_report

    info = device_report()
    packages = info["packages"]
    missing = sorted(k for k, v in packages.items() if v is None)
    checks = [Check("packages dinolab imports", not missing,
                    f"missing: {', '.join(missing)} (pydantic: scripts/gpu_wheels.sh)" if missing else
                    ", ".join(f"{k} {v}" for k, v in packages.items()))]
    try:
        from dinolab.config import ExperimentConfig  # noqa: F401 (pydantic, the schema)
        from dinolab.train.loop import train  # noqa: F401 (the loop without Ray or MLflow)

        checks.append(Check("dinolab's config and training loop import", True, "dinolab.config, dinolab.train.loop"))
    except Exception as e:  # noqa: BLE001
        checks.append(Check("dinolab's config and training loop import", False, f"{type(e).__name__}: {e}"))
    if not info["cuda_available"]:
        checks.append(Check("CUDA device", None, "none: torch.cuda.is_available() is False", required=False))
    else:
        ctx.shared["device_name"] = info["device"]
        smi = info.get("nvidia_smi", {})
        checks += [
            Check("CUDA device", True, f"{info['device']} (sm {info['capability']}, {info['multiprocessors']} SMs), "
                  f"driver {smi.get('driver_version', '?')}, torch {info['torch']}, CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}"),
            Check(f"free memory >= {MIN_FREE_GIB:g} GiB", info["free_gib"] >= MIN_FREE_GIB,
                  f"{info['free_gib']:.1f} of {info['total_gib']:.1f} GiB free"),
            Check("bf16 supported", info["bf16_supported"], ""),
            Check("dense bf16 peak known (for MFU)", info["dense_bf16_tflops"] is not None,
                  f"{info['dense_bf16_tflops']} TFLOP/s: {info['dense_bf16_source']}" if info["dense_bf16_tflops"] else
                  "not in gpu_device.DENSE_BF16_TFLOPS: MFU against the datasheet is not computed", required=False),
        ]
    return checks, info


def bench_step(ctx: Context) -> tuple[list[Check], dict]:
    import math

    import torch

    from .augment import augment_figure
    from .context import BenchContext
    from .gpu_device import dense_bf16_peak
    from .runner import save_results
    from .step import gemm_figure, step_figure

    bctx = BenchContext(workdir=ctx.scratch / "bench", command=ctx.command)
    figures = (
        ("gemm_fp32", lambda: gemm_figure(bctx, torch.float32)),
        ("gemm_bf16", lambda: gemm_figure(bctx, torch.bfloat16)),
        ("step_vit_small16_paper", lambda: step_figure(bctx, "step_vit_small16_paper")),
        ("augment_paper", lambda: augment_figure(bctx)),
    )
    checks, records, out = [], [], {}
    for name, run in figures:
        bctx.repeats = AUGMENT_REPEATS if name == "augment_paper" else None
        try:
            rec = run()
        except Exception as e:  # noqa: BLE001 - one figure's failure does not stop the others
            log.exception("bench figure %s failed", name)
            checks.append(Check(f"{name} measured", False, f"{type(e).__name__}: {e}"))
            continue
        finally:
            bctx.reset_threads()
        if rec is None:  # a CUDA-only figure on a machine without CUDA
            checks.append(Check(f"{name} measured", False, "not measured: needs CUDA"))
            continue
        if name == "step_vit_small16_paper":
            peak = dense_bf16_peak(ctx.shared.get("device_name") or torch.cuda.get_device_name(0))
            x = rec.extra
            ctx.shared["bench_peak_mb"] = rec.peak_memory_mb
            if peak is not None:
                x["datasheet_bf16_tflops"], x["datasheet_source"] = peak
                x["mfu_vs_datasheet_bf16"] = x["step_tflops"] / peak[0]
            mfu = x.get("mfu_vs_datasheet_bf16")
            checks.append(Check(f"{name} measured", math.isfinite(rec.value) and rec.value > 0,
                                f"{x[contract.IMAGES_PER_S]:.1f} img/s, {x['step_tflops']:.1f} TFLOP/s, "
                                f"peak {rec.peak_memory_mb:.0f} MiB, {rec.config['crops']}, batch {rec.config['batch']}"))
            checks.append(Check("MFU vs dense bf16 datasheet peak", None if mfu is None else 0 < mfu <= 1,
                                "device not in the peak table" if mfu is None else
                                f"{100 * mfu:.1f}% of {peak[0]:g} TFLOP/s ({100 * x.get('mfu_vs_bf16_gemm', float('nan')):.1f}% "
                                "of the measured bf16 GEMM)",
                                required=mfu is not None))
        else:
            checks.append(Check(f"{name} measured", math.isfinite(rec.value) and rec.value > 0,
                                f"{rec.value:.4g} {rec.unit}" + (f", baseline {rec.baseline:.4g}" if rec.baseline else "")))
        if rec.passed is not None:
            checks.append(Check(f"{name} bench target", rec.passed, f"{rec.target}: ratio {rec.ratio:.3g}", required=False))
        records.append(rec)
        out[name] = rec.to_dict()
    if records:
        path = save_results(ctx.out / "bench_results", bctx.machine, records)
        out["results_file"] = str(path.relative_to(ctx.out))
    return checks, out


def numerics_step(ctx: Context) -> tuple[list[Check], dict]:
    import torch

    from .gpu_numerics import numerics

    return numerics(torch.device("cuda"))


def training_step(ctx: Context) -> tuple[list[Check], dict]:
    from dinolab.config import load_experiment

    from .context import repo_root
    from .gpu_training import EXPERIMENT, overrides, prepare_data, run_training

    a = ctx.args
    data = None if a.synthetic or a.data is None else prepare_data(a.data, ctx.scratch)
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    cfg = load_experiment(repo_root() / EXPERIMENT, overrides(data, a.train_epochs, a.train_steps, workers))
    checks, figures = run_training(cfg, ctx.out / "training", ctx.scratch / "trial", a.train_max_seconds)
    peak, bench_peak = figures.get("final", {}).get(contract.CUDA_PEAK_MB), ctx.shared.get("bench_peak_mb")
    if peak and bench_peak:  # the loop resets the peak: an earlier, larger step must not show through
        checks.append(Check("cuda_peak_mb is the trial's own", peak < bench_peak,
                            f"{peak:.0f} MiB vs {bench_peak:.0f} MiB of the earlier ViT-S step in this process"))
    return checks, figures


EXPERIMENT_NAME = "experiments/cifar10_vit_tiny.yaml"


def _data_line(a: argparse.Namespace) -> str:
    if a.synthetic:
        return "the embedded synthetic shapes (--synthetic)"
    if a.data is None:
        return "the embedded synthetic shapes (no CIFAR-10 given or found)"
    return f"CIFAR-10 from {a.data}"


STEPS: tuple[Step, ...] = (
    Step("device", False, lambda a: "device, driver, torch / CUDA / cuDNN versions, free memory, packages", device_step),
    Step("bench", True, lambda a: "GEMM fp32/bf16; ViT-S/16 2x224+10x96 batch 64 bf16 step: img/s, MFU vs datasheet, "
         f"peak memory; augmentation stage 2 on the device vs CPU PIL ({AUGMENT_REPEATS} repeats)", bench_step),
    Step("numerics", True, lambda a: "ViT-S/16 step, same weights and batch: bf16 vs fp32, fp16 + grad scaler, "
         "fp32 CPU vs CUDA", numerics_step),
    Step("training", True, lambda a: f"{EXPERIMENT_NAME} for {a.train_epochs} epochs x {a.train_steps} steps on "
         f"{_data_line(a)}; k-NN each epoch; stops after {a.train_max_seconds:g} s", training_step),
)
STEP_NAMES = tuple(s.name for s in STEPS)


# ----------------------------------------------------------------------------- running and reporting


def run_step(step: Step, ctx: Context) -> StepResult:
    """Run one step (or record that it cannot run without CUDA); its result is written to steps/<name>.json."""
    start = time.perf_counter()
    checks, figures, error = [], {}, ""
    if step.needs_cuda and not ctx.cuda:
        checks.append(Check("needs a CUDA device", None, "none available: not run", required=False))
    else:
        log.info("step %s ...", step.name)
        try:
            checks, figures = step.run(ctx)
        except Exception as e:  # noqa: BLE001 - recorded; the next step runs
            log.exception("step %s failed", step.name)
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
            checks.append(Check("step ran", False, f"{type(e).__name__}: {e}"))
    status = step_status(checks, error, no_cuda=not ctx.cuda)
    result = StepResult(step.name, status, checks, figures, time.perf_counter() - start, error)
    path = ctx.out / "steps" / f"{step.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    log.info("step %s: %s (%.1f s)", step.name, result.status, result.seconds)
    return result


def format_summary(results: list[StepResult]) -> str:
    """The table: one row per check, the step's status and seconds on its first row; the verdict below."""
    head = ["step", "status", "s", "check", "result", "detail"]
    rows = []
    for r in results:
        for i, c in enumerate(r.checks or [Check("-", None, "", required=False)]):
            first = i == 0
            rows.append([r.name if first else "", r.status if first else "", f"{r.seconds:.0f}" if first else "",
                         c.name, c.result, c.detail.replace("\n", " ")])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths + [0])).rstrip()]
    lines.append("  ".join("-" * w for w in widths) + "  ------")
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths + [0])).rstrip() for row in rows]
    code = exit_code(results)
    verdict = {0: "PASS: every step passed", 1: "FAIL: a step failed", 3: "NO-CUDA: no step failed; the GPU steps did not run"}[code]
    lines += ["", f"{verdict} (exit {code})"]
    return "\n".join(lines)


def default_out() -> Path:
    return Path(os.environ.get("OUT") or "gpu_check_out")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    from .gpu_training import default_data

    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT when set, else ./gpu_check_out)")
    p.add_argument("--dry-run", action="store_true", help="list the steps and the plan; run nothing")
    p.add_argument("--only", nargs="+", choices=STEP_NAMES, metavar="STEP", help=f"run only these steps ({', '.join(STEP_NAMES)})")
    p.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 for the training step: an ImageFolder tree (train/, test/) or cifar10-jpeg.tar.gz "
                        "(default: .gpu/cifar10-jpeg.tar.gz or ../shared/datasets/ when there, else synthetic shapes)")
    p.add_argument("--synthetic", action="store_true", help="train on the embedded synthetic shapes even when CIFAR-10 is there")
    p.add_argument("--train-epochs", type=int, default=TRAIN_EPOCHS, help=f"training step epochs (default {TRAIN_EPOCHS})")
    p.add_argument("--train-steps", type=int, default=TRAIN_STEPS, help=f"steps per epoch, batch 256 (default {TRAIN_STEPS})")
    p.add_argument("--train-max-seconds", type=float, default=TRAIN_MAX_S,
                   help=f"cancel the training beyond this (a FAIL; default {TRAIN_MAX_S:g})")
    a = p.parse_args(argv)
    for flag in ("train_epochs", "train_steps", "train_max_seconds"):
        if getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(a, flag)}")
    if a.data is not None and not a.data.exists():
        p.error(f"--data {a.data}: no such file or folder (an ImageFolder tree or cifar10-jpeg.tar.gz)")
    if a.data is None and not a.synthetic:
        a.data = default_data()
    a.out = a.out or default_out()
    return a


def command_text(argv: list[str]) -> str:
    return shlex.join(["scripts/gpu_check.sh", *argv])


def dry_run(a: argparse.Namespace) -> str:
    selected = [s for s in STEPS if not a.only or s.name in a.only]
    lines = [f"gpu_check dry run: {len(selected)} step(s), output under {a.out}/ (gpu_check.json, steps/, summary.txt, "
             "bench_results/, training/)"]
    lines += [f"  {i}. {s.name:<9} {'[CUDA] ' if s.needs_cuda else '       '}{s.describe(a)}" for i, s in enumerate(selected, 1)]
    lines.append("Exit codes: 0 all PASS, 1 a step FAIL, 3 GPU steps not run (no CUDA), 2 bad arguments.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.dry_run:
        print(dry_run(a))
        return 0
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "gpu_check.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        root.addHandler(logging.StreamHandler(sys.stderr))
    scratch = Path(tempfile.mkdtemp(prefix="dinolab-gpu-check-"))
    ctx = Context(out=out, scratch=scratch, args=a, command=command_text(argv), cuda=torch.cuda.is_available())
    start = time.time()
    results = []
    try:
        for step in STEPS:
            if not a.only or step.name in a.only:
                results.append(run_step(step, ctx))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        root.removeHandler(handler)
        handler.close()
    from .record import machine_info, now_iso

    code = exit_code(results)
    summary = format_summary(results)
    (out / "summary.txt").write_text(summary + "\n")
    payload = {"date": now_iso(), "command": ctx.command, "machine": machine_info(), "seconds": time.time() - start,
               "exit_code": code, "steps": [r.to_dict() for r in results]}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(summary)
    return code


if __name__ == "__main__":
    sys.exit(main())

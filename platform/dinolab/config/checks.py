"""Cross-field checks: combinations the schema's per-field types cannot express.

Each failure is a ``ConfigError`` with one line naming the keys and what is allowed.
"""

from __future__ import annotations

from .loader import ConfigError
from .schema import ExperimentConfig


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_combinations(cfg: ExperimentConfig, source: str = "config") -> None:
    from dinolab.models.registry import input_multiple, resolve_arch

    try:
        resolve_arch(cfg.model.arch)
    except ValueError as e:
        raise ConfigError(f"{source}: model.arch: {e}") from None
    # Every input the backbone sees must tile into whole patches (ViT) / windows (Swin).
    try:
        multiple = input_multiple(cfg.model)
    except ValueError as e:
        raise ConfigError(f"{source}: model: {e}") from None
    sizes = {"crops.global_size": cfg.crops.global_size, "eval.image_size": cfg.eval_image_size}
    if cfg.crops.local_number > 0:
        sizes["crops.local_size"] = cfg.crops.local_size
    for key, size in sizes.items():
        if multiple > 1 and size % multiple:
            common = [d for d in _divisors(min(sizes.values())) if all(s % d == 0 for s in sizes.values())]
            raise ConfigError(
                f"{source}: {key}={size} is not a multiple of {multiple} required by model.arch={cfg.model.arch} "
                f"with model.patch_size={cfg.model.patch_size}"
                + (f", model.window_size={cfg.model.window_size}" if cfg.model.window_size else "")
                + f"; sizes that fit all crops here need a divisor among {common}"
            )

    if cfg.crops.local_number > 0 and cfg.crops.local_size > cfg.crops.global_size:
        raise ConfigError(f"{source}: crops.local_size={cfg.crops.local_size} must not exceed crops.global_size={cfg.crops.global_size}")
    if cfg.dino.loss != "ce" and cfg.dino.centering != "none":
        raise ConfigError(
            f"{source}: dino.centering={cfg.dino.centering} applies only to dino.loss=ce; "
            f"with dino.loss={cfg.dino.loss} set dino.centering=none"
        )
    if cfg.esvit.region_loss and cfg.dino.loss != "ce":
        raise ConfigError(f"{source}: esvit.region_loss needs dino.loss=ce (EsViT's L_R is a DINO cross-entropy), got {cfg.dino.loss}")
    if cfg.train.batch_size % cfg.resources.workers:
        raise ConfigError(
            f"{source}: train.batch_size={cfg.train.batch_size} must be divisible by resources.workers={cfg.resources.workers}"
        )
    if cfg.data.name != "synthetic" and not cfg.data.root:
        raise ConfigError(f"{source}: data.root is required for data.name={cfg.data.name} (a folder; e.g. --set data.root=~/data/cifar10)")
    if cfg.train.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"{source}: train.warmup_epochs={cfg.train.warmup_epochs} exceeds train.epochs={cfg.train.epochs}")
    if cfg.dino.centering == "sinkhorn" and (cfg.dino.teacher_temp == 0 or cfg.dino.warmup_teacher_temp == 0):
        raise ConfigError(f"{source}: dino.centering=sinkhorn needs dino.teacher_temp > 0 and dino.warmup_teacher_temp > 0 (Sinkhorn-Knopp is undefined at 0)")
    if cfg.dino.warmup_teacher_temp_epochs > cfg.train.epochs:
        raise ConfigError(
            f"{source}: dino.warmup_teacher_temp_epochs={cfg.dino.warmup_teacher_temp_epochs} exceeds train.epochs={cfg.train.epochs}"
        )

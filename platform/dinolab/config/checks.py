"""Cross-field checks: combinations the schema's per-field types cannot express.

Each failure is a ``ConfigError`` with one line naming the keys and what is allowed.
"""

from __future__ import annotations

import functools
import os

from .loader import ConfigError
from .schema import ExperimentConfig

GIB = 1024**3


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_combinations(cfg: ExperimentConfig, source: str = "config") -> None:
    from dinolab.models.base import check_side
    from dinolab.models.registry import input_multiple, resolve_arch

    try:
        resolve_arch(cfg.model.arch)
    except ValueError as e:
        raise ConfigError(f"{source}: model.arch: {e}") from None
    # Every input the backbone sees must tile into whole patches (ViT) / windows (Swin).
    try:
        multiple = input_multiple(cfg.model)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    sizes = {"crops.global_size": cfg.crops.global_size, "eval.image_size": cfg.eval_image_size}
    if cfg.crops.local_number > 0:
        sizes["crops.local_size"] = cfg.crops.local_size
    for key, size in sizes.items():
        try:
            check_side(cfg.model.arch, size, multiple, key)
        except ValueError as e:
            common = [d for d in _divisors(min(sizes.values())) if all(s % d == 0 for s in sizes.values())]
            raise ConfigError(
                f"{source}: {e} (model.patch_size={cfg.model.patch_size}"
                + (f", model.window_size={cfg.model.window_size}" if cfg.model.window_size else "")
                + f"); sizes that fit all crops here need a divisor among {common}"
            ) from None

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

    _check_training_set(cfg, source)
    _check_memory(cfg, source)


def _check_training_set(cfg: ExperimentConfig, source: str) -> None:
    """The embedded data set's size is known here (other data sets: ``dinolab.data.datasets.check_data``)."""
    if cfg.data.name == "synthetic":
        n = min(cfg.data.synthetic_train, cfg.data.train_limit or cfg.data.synthetic_train)
        check_batch_fits(n, cfg, source)


def check_batch_fits(n_train: int, cfg: ExperimentConfig, source: str = "config") -> None:
    """Every worker needs one full batch (the loader drops the last, incomplete one): ConfigError if not."""
    workers = cfg.resources.workers
    per_worker = cfg.train.batch_size // workers
    if n_train // workers < per_worker:
        limit = f" (data.train_limit={cfg.data.train_limit})" if cfg.data.train_limit else ""
        raise ConfigError(f"{source}: train.batch_size={cfg.train.batch_size} needs at least {per_worker * workers} training "
                          f"images ({per_worker} per worker x {workers} worker(s)); the training set has {n_train}{limit}")


def memory_estimate(cfg: ExperimentConfig) -> int:
    """Bytes one worker needs at least for the networks and their training state (an estimate from below).

    Parameters P: the DINO head(s) (MLP in -> hidden -> ... -> bottleneck, weight-normed bottleneck x out_dim,
    the optional predictor) and, where model.embed_dim is given, a ViT-like backbone (12 d^2 per block).
    fp32 bytes: student weights, gradients and two AdamW moments (4 P) plus the teacher (P): 20 P. Plus the
    logits of the crops of one worker's batch (student and teacher: 2 copies).
    """
    d, m = cfg.dino, cfg.model
    width = m.embed_dim or 384
    if d.head_layers == 1:
        mlp = width * d.bottleneck_dim
    else:
        mlp = width * d.hidden_dim + (d.head_layers - 2) * d.hidden_dim**2 + d.hidden_dim * d.bottleneck_dim
    head = mlp + d.bottleneck_dim * d.out_dim + d.out_dim
    if d.predictor:
        head += 2 * d.bottleneck_dim * d.hidden_dim
    heads = 2 if cfg.esvit.region_loss else 1
    backbone = 12 * m.embed_dim**2 * sum(m.depths or [12]) if m.embed_dim else 0
    params = heads * head + backbone
    crops = 2 + cfg.crops.local_number
    logits = 2 * (cfg.train.batch_size // cfg.resources.workers) * crops * d.out_dim
    return 4 * (5 * params + logits)


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@functools.lru_cache(maxsize=1)
def machine_memory() -> tuple[int, str]:
    """(bytes, words) of the largest memory a worker on this machine could train in: RAM, or a GPU's
    (asking the GPU starts CUDA in this process, so ``_check_memory`` asks only when RAM is too small)."""
    ram = ram_bytes()
    try:
        import torch

        if torch.cuda.is_available():
            gpu = max(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
            if gpu > ram:
                return gpu, f"{gpu / GIB:.0f} GiB of GPU memory"
    except Exception:  # noqa: BLE001 - no usable CUDA: RAM is the bound
        pass
    return ram, f"{ram / GIB:.0f} GiB of memory"


def _check_memory(cfg: ExperimentConfig, source: str) -> None:
    need = memory_estimate(cfg)
    if need <= ram_bytes():
        return
    have, words = machine_memory()
    if need > have:
        d = cfg.dino
        raise ConfigError(
            f"{source}: dino.out_dim={d.out_dim}, dino.hidden_dim={d.hidden_dim}, dino.bottleneck_dim={d.bottleneck_dim}, "
            f"model.embed_dim={cfg.model.embed_dim}: the networks and their optimizer state need about "
            f"{need / GIB:,.0f} GiB, more than this machine's {words}"
        )


def check_device_here(device: str, where: str = "train.device") -> None:
    """ConfigError if ``device`` (cuda, cuda:N) is not on this machine; called where a trial starts."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{where}={device}: this machine has no CUDA device (use train.device=auto or cpu here)")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{where}={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")

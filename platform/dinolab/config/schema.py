"""The typed experiment schema: the only place defaults live.

Every knob is one field whose description gives its meaning, the paper's default and its
"off" value. Each field is either *identity* (it changes the result: architecture, loss,
seed, data set, ...) or *runtime* (where and how the trial runs: data path, workers, device,
tracking URI, resources). Runtime fields are marked with ``runtime()``; everything else is
identity. Trial ids (see ``dinolab.config.identity``) hash identity fields only, so the same
trial has the same id on every machine.

Defaults follow the DINO repository's ``main_dino.py`` (see shared/reference/dino_reference.md
section 1) except where noted.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RUNTIME = {"runtime": True}
# The synthetic generator's limits (dinolab.data.synthetic imports them, so both check the same bounds):
# objects per image, and the object's area fraction (strict upper bound: larger objects no longer fit).
SYNTHETIC_MAX_OBJECTS = 8
SYNTHETIC_MAX_OBJECT_AREA = 0.6


def runtime(default: Any, description: str, **kw) -> Any:
    """A field that does not change the result (excluded from the trial id, logged as a tag)."""
    return Field(default, description=description, json_schema_extra=RUNTIME, **kw)


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, floats are finite
    (no knob gives inf or nan a meaning: ``train.lr=.inf`` would train into a nan loss)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


Scale = tuple[float, float]


class ModelConfig(Section):
    arch: str = Field(
        "vit_small",
        description="Backbone: vit_tiny, vit_small, vit_base, resnet18, resnet50, swin_tiny, ... or any "
        "timm model name. Paper: vit_small.",
    )
    # Structure knobs: None = the architecture's own value (its spec in dinolab.models, the only place defaults
    # live). A family refuses a knob it does not use, so a grid row that changes model.arch drags none along.
    patch_size: Optional[int] = Field(
        None, ge=1, description="ViT/Swin patch size; None = the architecture's own. Paper: 16 (also 8 and 5, Figure 5)."
    )
    window_size: Optional[int] = Field(
        None, ge=1, description="Swin attention window (EsViT Table 5: 7 or 14). None = the timm model's own."
    )
    embed_dim: Optional[int] = Field(None, ge=8, description="Override the backbone width (shrinks a model for small images).")
    depths: Optional[list[int]] = Field(None, description="Override depth: an int list per stage (Swin) or [depth] (ViT).")
    num_heads: Optional[Union[int, list[int]]] = Field(None, description="Override attention heads (int for ViT, list per Swin stage).")
    small_stem: Optional[bool] = Field(None, description="ResNet: CIFAR-style 3x3 stem without max-pool, for 32 px images (None = off).")
    drop_path_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="Stochastic depth, student only. Paper: 0.1; off: 0. ResNets (as in DINO) do not use it."
    )


class CropsConfig(Section):
    global_size: int = Field(224, ge=4, description="Global crop side in px. Paper: 224 (CIFAR: 32).")
    local_size: int = Field(96, ge=4, description="Local crop side in px. Paper: 96 (CIFAR: 16).")
    local_number: int = Field(8, ge=0, description="Number of local crops; 0 = multi-crop off. Paper code: 8 (Table 8: 2/6/10).")
    global_scale: Scale = Field((0.4, 1.0), description="RandomResizedCrop scale of global crops. Paper: (0.4, 1); (0.14, 1) without multi-crop.")
    local_scale: Scale = Field((0.05, 0.4), description="RandomResizedCrop scale of local crops. Paper: (0.05, 0.4).")

    @model_validator(mode="after")
    def _scales_ordered(self) -> "CropsConfig":
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not (0.0 < lo <= hi <= 1.0):
                raise ValueError(f"crops.{name} must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
        return self


class DinoConfig(Section):
    teacher: Literal["ema", "student_copy", "prev_iter", "prev_epoch"] = Field(
        "ema",
        description="Teacher policy (Figure 6): ema = momentum encoder (paper); student_copy = teacher is the "
        "current student; prev_iter = student of the previous iteration; prev_epoch = student at the end of the previous epoch.",
    )
    momentum: float = Field(0.996, ge=0.0, le=1.0, description="Base EMA teacher momentum, cosine to 1. Paper: 0.996.")
    loss: Literal["ce", "mse", "infonce"] = Field("ce", description="Table 7 loss: ce (DINO), mse (BYOL-like), infonce (MoCo-like).")
    predictor: bool = Field(False, description="Table 7: an MLP predictor on the student's output (BYOL-like). Paper DINO: off.")
    centering: Literal["ema", "sinkhorn", "none"] = Field(
        "ema", description="Teacher centering: ema (DINO Eq. 4), sinkhorn (Sinkhorn-Knopp, SwAV-like), none (collapses)."
    )
    center_momentum: float = Field(0.9, ge=0.0, le=1.0, description="Center EMA rate m (Appendix D). Paper: 0.9.")
    out_dim: int = Field(65536, ge=2, description="K, the head's output dimension. Paper: 65536.")
    hidden_dim: int = Field(2048, ge=2, description="DINO head MLP width. Paper: 2048.")
    bottleneck_dim: int = Field(256, ge=2, description="DINO head l2 bottleneck. Paper: 256.")
    head_layers: int = Field(3, ge=1, description="DINO head MLP layers before the bottleneck. Paper: 3.")
    use_bn_in_head: bool = Field(
        False, description="BatchNorm1d after each hidden Linear of the heads (Appendix C, 'heads w/ BN'). Paper: off (BN-free)."
    )
    norm_last_layer: bool = Field(True, description="Freeze the weight-norm gain of the head's last layer. Code: True.")
    student_temp: float = Field(0.1, gt=0.0, description="Student temperature tau_s. Paper: 0.1.")
    teacher_temp: float = Field(
        0.04, ge=0.0, description="Final teacher temperature tau_t; 0 = one-hot (argmax) target (Appendix D). Code: 0.04; paper: 0.07."
    )
    warmup_teacher_temp: float = Field(0.04, ge=0.0, description="Starting teacher temperature. Paper: 0.04.")
    warmup_teacher_temp_epochs: int = Field(0, ge=0, description="Epochs of linear tau_t warm-up. Code: 0; paper: 30.")
    sinkhorn_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations (SwAV: 3).")
    infonce_temp: float = Field(0.2, gt=0.0, description="InfoNCE temperature (MoCo v3: 0.2).")


class EsvitConfig(Section):
    region_loss: bool = Field(False, description="EsViT region-level matching loss L_R (Eq. 2) on last-stage tokens. Off in DINO.")


class TrainConfig(Section):
    epochs: int = Field(100, ge=1, description="Training epochs. Paper code: 100; ablations: 300.")
    batch_size: int = Field(64, ge=2, description="Total batch over all workers (the linear lr scaling rule uses it).")
    lr: float = Field(0.0005, gt=0.0, description="Peak lr for batch 256, scaled by batch_size/256. Paper: 0.0005.")
    min_lr: float = Field(1e-6, ge=0.0, description="Final lr of the cosine. Paper: 1e-6.")
    warmup_epochs: int = Field(10, ge=0, description="Linear lr warm-up epochs. Paper: 10.")
    weight_decay: float = Field(0.04, ge=0.0, description="Cosine weight decay start. Paper: 0.04.")
    weight_decay_end: float = Field(0.4, ge=0.0, description="Cosine weight decay end. Paper: 0.4.")
    clip_grad: float = Field(3.0, ge=0.0, description="Per-parameter gradient norm clip; 0 = off. Paper: 3.0.")
    freeze_last_layer: int = Field(1, ge=0, description="Epochs during which the head's last layer is frozen. Paper: 1.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer. Paper: adamw.")
    seed: int = Field(0, ge=0, description="Seed of every random generator in the trial.")
    steps_per_epoch: Optional[int] = Field(
        None, ge=1, description="Cap on optimizer steps per epoch (None = one pass over the data); for short runs."
    )
    # Runtime knobs: where and how, never what.
    device: str = runtime("auto", "auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = runtime(
        "auto", "Autocast on CUDA: auto = bf16 where supported, else fp16. CPU always runs fp32."
    )
    threads: Optional[int] = runtime(None, "torch threads (1..1024); None = the CPUs this trial was given.", ge=1, le=1024)
    keep_checkpoints: int = runtime(2, "Epoch checkpoints kept besides the final weights.", ge=1)
    progress: bool = runtime(True, "Show a progress bar.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,3})?", device):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return device


class DataConfig(Section):
    name: Literal["synthetic", "imagefolder", "cifar10", "cifar100"] = Field(
        "synthetic", description="synthetic (embedded, generated in code), imagefolder, cifar10, cifar100."
    )
    root: Optional[str] = runtime(None, "Data folder (imagefolder / cifar). Expanded (~, relative to the YAML), made absolute.")
    num_workers: int = runtime(0, "DataLoader worker processes.", ge=0)
    train_limit: Optional[int] = Field(None, ge=1, description="Use only the first N training images (a fixed, seeded subset).")
    augment: Literal["fast", "reference"] = Field(
        "fast",
        description="Multi-crop implementation: fast = crops per image on uint8 tensors + batched colour ops on the "
        "training device; reference = DINO's PIL pipeline one image at a time. Same recipe, checked statistically.",
    )
    # The embedded data set (data.name = synthetic); these shape the data, so they are identity.
    synthetic_train: int = Field(2000, ge=10, description="Synthetic: training images.")
    synthetic_test: int = Field(500, ge=10, description="Synthetic: test images.")
    synthetic_size: int = Field(32, ge=8, description="Synthetic: image side in px.")
    synthetic_classes: int = Field(6, ge=2, le=10, description="Synthetic: number of shape classes.")
    synthetic_seed: int = Field(0, ge=0, description="Synthetic: generator seed (the data set, not the trial).")
    synthetic_palette: Literal["vivid", "muted", "grey", "light"] = Field(
        "muted", description="Synthetic colours: vivid (random RGB), muted (near-grey; colour is then a weak instance cue), "
        "grey (one mid-grey background level for every image, objects lighter or darker per object: no per-image grey level) "
        "or light (that background, every object a lighter pure grey: neither grey level nor polarity tells images apart)."
    )
    synthetic_backgrounds: list[Literal["flat", "gradient", "stripes", "checkers", "blobs"]] = Field(
        ["flat", "gradient", "stripes", "checkers", "blobs"], min_length=1,
        description="Synthetic: background kinds drawn from, uniformly per image.",
    )
    synthetic_max_rotation: float = Field(
        180.0, ge=0.0, le=180.0,
        description="Synthetic: the object's rotation ~ U(-x, x) degrees; 180 = any angle. DINO's augmentations teach no "
        "rotation invariance, so a smaller range keeps shape classes learnable by it.",
    )
    synthetic_objects: tuple[int, int] = Field(
        (1, 1), description="Synthetic: (min, max) objects per image, all of the class's shape, each with its own colour, "
        "size, rotation and place; two crops then share the shape and little else.",
    )
    synthetic_object_area: Scale = Field(
        (0.06, 0.16), description="Synthetic: the object's area as a fraction of the image, drawn uniformly (the same for every class)."
    )

    @model_validator(mode="after")
    def _synthetic_ranges(self) -> "DataConfig":
        # The generator's own limits, checked here so a wrong value stops before any trial starts.
        lo, hi = self.synthetic_object_area
        if not 0.0 < lo <= hi < SYNTHETIC_MAX_OBJECT_AREA:
            raise ValueError(f"data.synthetic_object_area must satisfy 0 < low <= high < {SYNTHETIC_MAX_OBJECT_AREA}, got ({lo}, {hi})")
        lo, hi = self.synthetic_objects
        if not 1 <= lo <= hi <= SYNTHETIC_MAX_OBJECTS:
            raise ValueError(f"data.synthetic_objects must be (min, max) with 1 <= min <= max <= {SYNTHETIC_MAX_OBJECTS}, got ({lo}, {hi})")
        return self


class EvalConfig(Section):
    image_size: Optional[int] = Field(None, ge=4, description="Evaluation image side; None = crops.global_size.")
    knn_every: int = Field(1, ge=1, description="Epochs between k-NN evaluations (the last epoch is always evaluated).")
    knn_k: int = Field(20, ge=1, description="k of the weighted k-NN. Paper: 20.")
    knn_temperature: float = Field(0.07, gt=0.0, description="k-NN vote temperature T. Paper: 0.07.")
    linear: bool = Field(True, description="Run the linear probe at the end.")
    linear_epochs: int = Field(100, ge=1, description="Linear probe epochs on cached features.")
    linear_lrs: list[float] = Field([0.1, 0.03, 0.01], description="Linear probe learning rates; chosen on a validation split.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Training images held out to select the probe's lr and epoch.")
    max_train_images: Optional[int] = Field(None, ge=1, description="Cap on the k-NN / probe training bank (None = all).")
    max_test_images: Optional[int] = Field(None, ge=1, description="Cap on the evaluated test images (None = all).")

    @field_validator("linear_lrs")
    @classmethod
    def _positive_lrs(cls, lrs: list[float]) -> list[float]:
        if any(lr <= 0 for lr in lrs):
            raise ValueError(f"every linear probe learning rate must be > 0, got {lrs[:10]}")
        return lrs

    @model_validator(mode="after")
    def _lrs_for_probe(self) -> "EvalConfig":
        if self.linear and not self.linear_lrs:
            raise ValueError("eval.linear_lrs is empty; the linear probe (eval.linear=true) needs at least one learning rate")
        return self


class TrackingConfig(Section):
    uri: Optional[str] = runtime(None, "MLflow tracking URI; None = $MLFLOW_TRACKING_URI or the dinolab home's SQLite store.")
    experiment: str = runtime("dinolab", "MLflow experiment name (not empty, at most 200 characters).", min_length=1,
                              max_length=200, pattern=r"\S")
    run_name: Optional[str] = runtime(None, "MLflow run name; None = the experiment file's name.")


class ResourcesConfig(Section):
    workers: int = runtime(1, "Data-parallel workers per trial.", ge=1)
    cpus_per_worker: float = runtime(1.0, "CPUs per worker (fractions allowed).", gt=0)
    gpus_per_worker: float = runtime(0.0, "GPUs per worker (fractions allowed).", ge=0)


class ExperimentConfig(Section):
    name: str = runtime("experiment", "A human name for the run (not part of the trial id).")
    model: ModelConfig = ModelConfig()
    crops: CropsConfig = CropsConfig()
    dino: DinoConfig = DinoConfig()
    esvit: EsvitConfig = EsvitConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @property
    def eval_image_size(self) -> int:
        return self.eval.image_size or self.crops.global_size

"""Any other timm model (``model.arch`` = a ``timm.list_models()`` name), never pretrained.

The model is ``timm.create_model(name, pretrained=False, num_classes=0, ...)``; where its class
takes them, ``img_size`` (the global crop), ``dynamic_img_size=True`` (or ``strict_img_size=False``)
and ``drop_path_rate`` are passed, and the overrides ``embed_dim``, ``depths``, ``num_heads``,
``window_size`` when set (ValueError when the class has no such argument). A timm name fixes its
own patch size and stem, so ``model.patch_size`` and ``model.small_stem`` are refused. The resolved
structure (the trial id's part) is the timm name and the overrides that change the network: one
equal to the model's own value (same parameters and same module settings when both are built on
the meta device) is dropped, so ``depths: [12]`` on a 12-block ViT is the same trial as no override. The pooled feature is
``forward_head(forward_features(x), pre_logits=True)``; the tokens are ``forward_features(x)``
as (B, N, C): a (B, C, h, w) or (B, h, w, C) map flattened, or a (B, T, C) sequence without its
prefix ([CLS] / register) tokens. ``token_dim`` (C) can differ from ``embed_dim`` (D) when the
model projects its pooled feature (e.g. MobileNetV3's conv head).
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import timm
import torch
from torch import nn

from .base import Backbone, reject_unused
from .registry import register_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Probe:
    init_args: frozenset[str]  # the model class's named __init__ arguments
    patch_size: Optional[int]  # lcm of the patch embedding's sides, None without one


@lru_cache(maxsize=64)
def _probe(name: str) -> _Probe:
    """Inspect a timm model built on the meta device (no memory, no weights, a fraction of a second)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception as e:  # a model whose __init__ reads tensor values: build it for real once
        log.debug("meta build of %s failed (%s); probing on the CPU", name, e)
        model = timm.create_model(name, pretrained=False, num_classes=0)
    params = inspect.signature(type(model).__init__).parameters
    init_args = frozenset(n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        patch = math.lcm(*patch) if isinstance(patch, (tuple, list)) else int(patch)
    return _Probe(init_args, patch)


def _override_kwargs(arch: str, model_cfg: Any, probe: _Probe) -> dict:
    """timm keyword arguments for the overrides set in ``model_cfg`` (ValueError when the class lacks one)."""
    reject_unused(TimmBackbone, arch, model_cfg, "a timm model name fixes its own patch size and stem")
    kwargs: dict = {}
    for field in ("embed_dim", "num_heads", "window_size"):
        value = getattr(model_cfg, field, None)
        if value is None:
            continue
        if field not in probe.init_args:
            raise ValueError(f"model.{field}={value!r}: timm model {arch} has no {field} argument")
        kwargs[field] = list(value) if isinstance(value, (list, tuple)) else value
    depths = getattr(model_cfg, "depths", None)
    if depths is not None:
        if "depths" in probe.init_args:
            kwargs["depths"] = [int(d) for d in depths]
        elif "depth" in probe.init_args and len(depths) == 1:
            kwargs["depth"] = int(depths[0])
        else:
            raise ValueError(f"model.depths={depths!r}: timm model {arch} takes neither depths (per stage) nor one depth")
    return kwargs


def _timm_kwargs(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


_SCALARS = (bool, int, float, str)


@lru_cache(maxsize=256)
def _fingerprint(name: str, frozen_kwargs: str) -> str:
    """What ``timm.create_model(name, **kwargs)`` builds: every parameter's and buffer's shape and every
    module's type and scalar settings (heads, window, ...), hashed; built on the meta device (no memory)."""
    import hashlib
    import json

    kwargs = _timm_kwargs(json.loads(frozen_kwargs))
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as e:  # noqa: BLE001 - as in _probe: some models read tensor values in __init__
        log.debug("meta build of %s failed (%s); building on the CPU", name, e)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    parts = [(n, list(t.shape)) for n, t in model.state_dict().items()]
    for path, module in model.named_modules():
        settings = {k: v if not isinstance(v, tuple) else list(v) for k, v in vars(module).items()
                    if not k.startswith("_") and (isinstance(v, _SCALARS) or (isinstance(v, tuple) and all(isinstance(x, _SCALARS) for x in v)))}
        parts.append((path, type(module).__name__, sorted(settings.items())))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _effective(name: str, kwargs: dict) -> dict:
    """``kwargs`` without the overrides that build what the model builds without them."""
    import json

    def fp(kw: dict) -> str | None:
        try:
            return _fingerprint(name, json.dumps(kw, sort_keys=True))
        except Exception:  # noqa: BLE001 - e.g. a width the default heads do not divide: the override is needed
            return None

    if not kwargs:
        return {}
    try:
        full = _fingerprint(name, json.dumps(kwargs, sort_keys=True))
    except Exception as e:  # noqa: BLE001 - timm asserts on impossible structures
        raise ValueError(f"model overrides {kwargs} do not build timm model {name}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in kwargs.items() if fp({j: w for j, w in kwargs.items() if j != k}) != full}


@register_backbone("timm")
class TimmBackbone(Backbone):
    """Any timm model behind the backbone contract; ``self.model`` is the timm module."""

    archs: dict = {}  # any timm.list_models() name, resolved by the registry

    def __init__(self, model: nn.Module) -> None:
        super().__init__(getattr(model, "head_hidden_size", None) or model.num_features)
        self.model = model
        self.token_dim = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"

    knobs = ("embed_dim", "depths", "num_heads", "window_size")

    @classmethod
    def resolve(cls, arch: str, model_cfg: Any) -> dict:
        overrides = _override_kwargs(arch, model_cfg, _probe(arch))
        return {"timm_name": arch, "overrides": _effective(arch, overrides)}

    @classmethod
    def multiple(cls, structure: dict) -> int:
        return _probe(structure["timm_name"]).patch_size or 1

    @classmethod
    def uses_drop_path(cls, arch: str) -> bool:
        return "drop_path_rate" in _probe(arch).init_args

    @classmethod
    def create(cls, arch: str, structure: dict, image_size: int, drop_path_rate: float) -> "TimmBackbone":
        probe = _probe(arch)
        kwargs = _timm_kwargs(structure["overrides"])
        if "img_size" in probe.init_args:
            kwargs["img_size"] = image_size
        if "dynamic_img_size" in probe.init_args:
            kwargs["dynamic_img_size"] = True
        elif "strict_img_size" in probe.init_args:
            kwargs["strict_img_size"] = False
        if "drop_path_rate" in probe.init_args:
            kwargs["drop_path_rate"] = drop_path_rate
        elif drop_path_rate > 0:
            log.warning("timm model %s has no drop_path_rate argument: drop_path_rate=%g ignored", arch, drop_path_rate)
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        return cls(model)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (pre-logits pooled feature (B, D), last-stage tokens (B, N, C))."""
        features = self.model.forward_features(x)
        if hasattr(self.model, "forward_head"):
            pooled = self.model.forward_head(features, pre_logits=True)
        else:
            pooled = self.model(x)
        if features.ndim == 4:
            tokens = features.flatten(1, 2) if self.channels_last else features.flatten(2).transpose(1, 2)
        elif features.ndim == 3:
            tokens = features[:, self.num_prefix_tokens:]
        elif features.ndim == 2:
            tokens = features[:, None]  # the model pools inside forward_features: one token
        else:
            raise ValueError(f"timm model returned features of shape {tuple(features.shape)}; expected 2-4 dims")
        return pooled.flatten(1), tokens

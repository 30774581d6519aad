"""Backbone registry and factory (timm-style: a decorator registers a family, a factory builds by name).

``model.arch`` is either an alias owned by a registered family (``vit_small``, ``swin_tiny``,
``resnet50``, ... see ``list_backbones()``) or any other timm model name, built by the generic
``timm`` family. Families live in one module each (``vit.py``, ``swin.py``, ``resnet.py``,
``timm_generic.py``) and register themselves with ``@register_backbone(family)``; they are
imported lazily so that importing this module (as the config checks do) stays cheap.

Nothing here downloads weights: every model is built with ``pretrained=False``.
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from typing import Any, Callable, TypeVar

from .base import Backbone, check_side

log = logging.getLogger(__name__)

GENERIC_FAMILY = "timm"
_FAMILY_MODULES = ("vit", "swin", "resnet", "timm_generic")

_FAMILIES: dict[str, type[Backbone]] = {}
_ALIASES: dict[str, str] = {}  # alias -> family

B = TypeVar("B", bound=type[Backbone])


def register_backbone(family: str) -> Callable[[B], B]:
    """Class decorator: register a ``Backbone`` subclass as ``family`` with the aliases in its ``archs``."""

    def wrap(cls: B) -> B:
        if not (isinstance(cls, type) and issubclass(cls, Backbone)):
            raise ValueError(f"register_backbone({family!r}) decorates Backbone subclasses, got {cls!r}")
        if family in _FAMILIES and _FAMILIES[family] is not cls:
            raise ValueError(f"backbone family {family!r} is already registered by {_FAMILIES[family].__name__}")
        for alias in cls.archs:
            owner = _ALIASES.get(alias)
            if owner is not None and owner != family:
                raise ValueError(f"arch alias {alias!r} is already registered by family {owner!r}")
        cls.family = family
        _FAMILIES[family] = cls
        for alias in cls.archs:
            _ALIASES[alias] = family
        return cls

    return wrap


def _load_families() -> None:
    for name in _FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{name}")


@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def list_backbones() -> list[str]:
    """The arch aliases of the registered families (the generic timm family adds any timm name)."""
    _load_families()
    return list(_ALIASES)


def family_of(arch: str) -> str:
    """``"vit" | "swin" | "resnet"`` for an alias, ``"timm"`` for any other timm model name."""
    _load_families()
    if isinstance(arch, str) and arch in _ALIASES:
        return _ALIASES[arch]
    resolve_arch(arch)
    return GENERIC_FAMILY


def resolve_arch(name: str) -> str:
    """The timm model name ``name`` builds from; ValueError when it is neither an alias nor a timm model."""
    _load_families()
    if isinstance(name, str) and name in _ALIASES:
        return _FAMILIES[_ALIASES[name]].archs[name].timm_name
    if isinstance(name, str) and name in _timm_names():
        return name
    raise ValueError(
        f"unknown arch {name!r}: use one of the aliases {sorted(_ALIASES)} or any timm model name "
        f"(timm.list_models(), e.g. 'convnext_atto'; no pretrained tags)"
    )


def _family_class(arch: str) -> type[Backbone]:
    return _FAMILIES[family_of(arch)]


def resolve_structure(model_cfg: Any) -> dict:
    """The structure ``model_cfg`` builds: ``{"family": ..., **the family's resolved values}``.

    Defaults are applied here (in the family's ``resolve``, the only place they live), so every
    spelling of one network resolves to one dict; a knob the family does not use raises ValueError.
    """
    cls = _family_class(model_cfg.arch)
    return {"family": cls.family, **cls.resolve(model_cfg.arch, model_cfg)}


def input_multiple(model_cfg: Any) -> int:
    """Every input side (global, local and evaluation crops) must be a multiple of this.

    ViT: the patch size. Swin: ``patch_size * 2**(n_stages - 1)`` (every patch merging halves an
    even grid). ResNet: 1. Other timm models: their patch size if they have a patch embedding,
    else 1. Raises ValueError for an unknown arch or overrides that do not apply to it.
    """
    cls = _family_class(model_cfg.arch)
    return int(cls.multiple(cls.resolve(model_cfg.arch, model_cfg)))


def structure_knobs(arch: str) -> tuple[str, ...]:
    """The ModelConfig structure knobs ``arch``'s family reads (it refuses the others)."""
    return _family_class(arch).knobs


def uses_drop_path(arch: str) -> bool:
    """Whether ``model.drop_path_rate`` reaches ``arch``'s network (ResNets and some timm models: no)."""
    return _family_class(arch).uses_drop_path(arch)


def build_backbone(model_cfg: Any, image_size: int, drop_path_rate: float) -> Backbone:
    """Build ``model_cfg.arch`` (never pretrained) for global crops of ``image_size`` px.

    ``drop_path_rate`` is passed separately because the student uses ``model.drop_path_rate`` and
    the teacher 0. Overrides in ``model_cfg`` (patch_size, window_size, embed_dim, depths,
    num_heads, small_stem) are applied where the family has them and rejected where it has not.
    """
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    cls = _family_class(model_cfg.arch)
    structure = cls.resolve(model_cfg.arch, model_cfg)
    check_side(model_cfg.arch, int(image_size), cls.multiple(structure), "image_size")
    backbone = cls.create(model_cfg.arch, structure, int(image_size), float(drop_path_rate))
    n_params = sum(p.numel() for p in backbone.parameters())
    log.info("built %s (%s family, D=%d, %.2fM parameters, drop_path_rate=%g)",
             model_cfg.arch, cls.family, backbone.embed_dim, n_params / 1e6, drop_path_rate)
    return backbone

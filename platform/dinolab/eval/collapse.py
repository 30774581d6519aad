"""Collapse detection from a run's per-epoch diagnostics (DINO §5.3, Fig. 7, Appendix D).

The paper decomposes the loss as H(Pt, Ps) = h(Pt) + KL(Pt || Ps), with h the teacher's entropy (nats)
over the K = out_dim outputs. Both collapse modes make the student copy a constant teacher, so
KL -> 0, and they differ in where h ends:

- without centering (sharpening only) one dimension dominates: Pt is one-hot, h -> 0;
- without sharpening (centering only, or tau_t too high) Pt is uniform, h -> ln K.

A collapsed backbone carries no class information, so its k-NN accuracy is chance (the paper's
collapsed runs score 0.1% on ImageNet, i.e. 100 / 1000 classes).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from dinolab.track.contract import KL, KNN_TOP1, TEACHER_ENTROPY


def _tail(values: Sequence[float] | None, n: int) -> list[float]:
    return [float(v) for v in values[-n:]] if values and n > 0 else []


def _all_within(values: Sequence[float], target: float, eps: float) -> bool:
    # A non-finite value never counts as "within": NaN/inf losses are the trainer's failure path.
    return bool(values) and all(math.isfinite(v) and abs(v - target) <= eps for v in values)


def detect_collapse(
    history: Mapping[str, Sequence[float]],
    out_dim: int,
    num_classes: int,
    last_k: int = 3,
    entropy_eps: float = 0.1,
    kl_eps: float = 0.05,
    knn_margin: float = 5.0,
) -> tuple[bool, str]:
    """Decide whether a run collapsed, and name the mode.

    Args:
        history: per-epoch lists ``"teacher_entropy"`` (h(Pt), nats), ``"kl"`` (KL(Pt || Ps), nats) and
            ``"knn_top1"`` (percent; may be shorter than the others, e.g. every few epochs, or absent).
        out_dim: K, the head's output dimension; the uniform entropy is ln K.
        num_classes: classes of the k-NN evaluation; chance is 100 / num_classes percent.
        last_k: epochs at the end of the run that must all satisfy (a) or (b); a run shorter than
            ``last_k`` epochs uses all its epochs (the KL condition keeps that from firing on noise).
        entropy_eps: nats. (a) needs h <= entropy_eps, (b) needs |h - ln K| <= entropy_eps. 0.1 nats is
            far from both ends for any healthy run yet easily met by a collapsed one, where h reaches
            0 or ln K up to ~1e-3 (one-hot: a logit gap of 0.5 at tau_t = 0.04 already leaves h < 0.01
            for K = 64). Must be below ln(K) / 2 so the two modes cannot both match.
        kl_eps: nats. Both (a) and (b) need KL <= kl_eps in every one of the last epochs. KL -> 0 is the
            paper's signature of collapse (Fig. 7); it also keeps tau_t = 0 runs (one-hot targets, h = 0
            by construction, not collapsed: 43.9% k-NN in Appendix D) from matching (a), since their
            student does not match the one-hot target and KL stays large (nats). Not 0.01: a student with
            BatchNorm in its head (``dino.use_bn_in_head``) cannot give every image exactly the same output
            (BN rescales the batch's tiny differences), so under a collapsed one-hot teacher its KL floors
            near 0.016 (the demo without centering, measured 2026-11-28).
        knn_margin: percentage points. (c) fires when the final k-NN top-1 <= chance + knn_margin. Five
            points sit well above the sampling noise of chance on a few hundred test images
            (std ~ 2 points) while any backbone that learned something is far above.

    Returns:
        ``(collapsed, reason)``; ``reason`` names every mode that matched, joined by "; ", e.g.
        "no centering: entropy 0.00 ~ 0 and KL 0.0001", "uniform: entropy 2.77 ~ ln(16) = 2.77 and
        KL 0.0002", "k-NN 17.0% within 5 pts of chance 16.7%"; "" when not collapsed.
    """
    if out_dim < 2:
        raise ValueError(f"out_dim must be >= 2, got {out_dim}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if last_k < 1:
        raise ValueError(f"last_k must be >= 1, got {last_k}")
    log_k = math.log(out_dim)
    if not 0.0 <= entropy_eps < log_k / 2:
        raise ValueError(f"entropy_eps must be in [0, ln(out_dim) / 2 = {log_k / 2:.3f}), got {entropy_eps}")
    if kl_eps < 0 or knn_margin < 0:
        raise ValueError(f"kl_eps and knn_margin must be >= 0, got {kl_eps} and {knn_margin}")

    reasons = []
    entropy, kl = history.get(TEACHER_ENTROPY), history.get(KL)
    n = min(last_k, len(entropy or ()), len(kl or ()))
    h_tail, kl_tail = _tail(entropy, n), _tail(kl, n)
    # KL >= 0 in exact arithmetic; |KL| tolerates float round-off just below 0.
    if _all_within(kl_tail, 0.0, kl_eps):
        if _all_within(h_tail, 0.0, entropy_eps):
            reasons.append(f"no centering: entropy {h_tail[-1]:.2f} ~ 0 and KL {kl_tail[-1]:.4f}")
        elif _all_within(h_tail, log_k, entropy_eps):
            reasons.append(f"uniform: entropy {h_tail[-1]:.2f} ~ ln({out_dim}) = {log_k:.2f} and KL {kl_tail[-1]:.4f}")

    knn = _tail(history.get(KNN_TOP1), 1)
    chance = 100.0 / num_classes
    if knn and math.isfinite(knn[0]) and knn[0] <= chance + knn_margin:
        where = f"within {knn_margin:g} pts of" if knn[0] >= chance - knn_margin else "below"
        reasons.append(f"k-NN {knn[0]:.1f}% {where} chance {chance:.1f}%")
    return bool(reasons), "; ".join(reasons)

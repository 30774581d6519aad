"""Sinkhorn-Knopp teacher targets (SwAV), the ``dino.centering = sinkhorn`` alternative to centering.

The teacher scores of a batch, Q_bk = exp(t_bk / tau_t) for samples b (over all workers, B_tot of
them) and prototypes k (K of them), are alternately rescaled so that every prototype row carries
mass 1/K and every sample column mass 1/B_tot (SwAV, Caron et al. 2020, Sec. 3.1 / Alg. 1). One
iteration = prototype step then sample step. The result is returned multiplied by B_tot, i.e. as
per-sample distributions (each row sums to exactly 1); the prototype marginals sum_b Q_bk then
equal B_tot / K up to the error left by the final sample step, which vanishes as iterations grow.

SwAV first divides Q by its total sum; that only rescales Q by a constant, which the first
prototype step cancels, so here the whole computation runs in the log domain instead (exp(t / 0.04)
overflows float32 for logits above ~3.5). Distributed: the prototype sums run over every worker's
samples (all-reduce), as in SwAV's ``distributed_sinkhorn``.
"""

from __future__ import annotations

import math

import torch

from ._distributed import all_reduce_max, all_reduce_sum, world_size


def _global_logsumexp_over_samples(log_q: torch.Tensor) -> torch.Tensor:
    """log sum_b exp(log_q[b, k]) over the samples of all workers: (B, K) -> (1, K)."""
    peak = all_reduce_max(log_q.max(dim=0, keepdim=True).values)  # (1, K), stabiliser
    mass = all_reduce_sum(torch.exp(log_q - peak).sum(dim=0, keepdim=True))  # (1, K)
    return peak + torch.log(mass)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, n_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignment of samples to prototypes.

    Args:
        scores: (B, K) log-scores of this worker's samples, i.e. teacher_logits / tau_t.
        n_iterations: alternations of prototype and sample normalisation (SwAV: 3), >= 1.
    Returns:
        (B, K) float32 targets; every row sums to 1, and sum over all workers' rows of column k
        is approximately B_tot / K.
    """
    if n_iterations < 1:
        raise ValueError(f"sinkhorn n_iterations must be >= 1, got {n_iterations}")
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn scores must be (B, K), got shape {tuple(scores.shape)}")
    n_local, n_protos = scores.shape
    n_total = n_local * world_size()
    log_q = scores.float()
    for _ in range(n_iterations):
        # prototype step: each prototype gets total mass 1/K over all samples of all workers
        log_q = log_q - _global_logsumexp_over_samples(log_q) - math.log(n_protos)
        # sample step: each sample gets total mass 1/B_tot
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n_total)
    return torch.exp(log_q + math.log(n_total))

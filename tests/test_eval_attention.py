"""Attention-mass thresholding and Jaccard (DINO Figure 4) against explicit loops."""

import numpy as np
import torch

from dinolab.eval.attention import attention_jaccard, jaccard, keep_mass


def keep_mass_loop(values, mass):
    """DINO's visualize_attention rule: sort ascending, cumulative share, keep where it exceeds 1 - mass."""
    flat = list(values)
    total = sum(flat)
    order = sorted(range(len(flat)), key=lambda i: flat[i])
    keep = [False] * len(flat)
    running = 0.0
    for i in order:
        running += flat[i]
        keep[i] = running / total > 1 - mass
    return keep


def test_keep_mass_hand_case():
    attn = torch.tensor([[0.05, 0.5], [0.3, 0.15]])
    assert keep_mass(attn, 0.6).tolist() == [[False, True], [True, False]]
    assert keep_mass(attn, 0.9).tolist() == [[False, True], [True, True]]


def test_keep_mass_matches_loop_on_random_maps():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 3, 4, 4, generator=g) ** 3
    for mass in (0.3, 0.6, 0.8):
        kept = keep_mass(maps, mass)
        for b in range(5):
            for h in range(3):
                expected = keep_mass_loop(maps[b, h].flatten().tolist(), mass)
                assert kept[b, h].flatten().tolist() == expected


def test_jaccard_loop_and_best_head():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 6, 6, generator=g) > 0.5
    m = torch.rand(3, 6, 6, generator=g) > 0.5
    got = jaccard(a, m)
    for i in range(3):
        inter = sum(bool(a[i, r, c]) and bool(m[i, r, c]) for r in range(6) for c in range(6))
        union = sum(bool(a[i, r, c]) or bool(m[i, r, c]) for r in range(6) for c in range(6))
        assert abs(float(got[i]) - inter / union) < 1e-6

    # Head 0 attends exactly to the object (top-left 2x2 patches of a 4x4 grid), head 1 to the opposite corner.
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, :2, :2] = 1.0
    maps[0, 1, 2:, 2:] = 1.0
    j = attention_jaccard(maps, mask, mass=0.9)
    assert np.isclose(j["best_head"], 100.0)
    assert np.isclose(j["mean_head"], 50.0)

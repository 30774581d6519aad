"""DINOLoss against explicit loops over the paper's Eq. 1-4, Sinkhorn against a plain SwAV loop."""

import math

import pytest
import torch

from dinolab.losses import DINOLoss, entropy_and_kl, sinkhorn_knopp, view_pairs


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [x / s for x in e]


def _log_softmax(xs):
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _reference_loss(student, teacher, n_crops, tau_s, targets):
    """Eq. 3 by loops: student (n_crops*B, K) and target (2B, K) as nested python lists."""
    batch = len(teacher) // 2
    terms = []
    for iq in (0, 1):
        for v in range(n_crops):
            if v == iq:
                continue
            ce = 0.0
            for b in range(batch):
                logp = _log_softmax([x / tau_s for x in student[v * batch + b]])
                q = targets[iq * batch + b]
                ce += -sum(qk * lk for qk, lk in zip(q, logp))
            terms.append(ce / batch)
    assert len(terms) == 2 * (n_crops - 1)
    return sum(terms) / len(terms)


def _ema_targets(teacher, center, tau_t):
    return [_softmax([(t - c) / tau_t for t, c in zip(row, center)]) for row in teacher]


def _inputs(n_crops, batch, k, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n_crops * batch, k, generator=g) * scale
    teacher = torch.randn(2 * batch, k, generator=g) * scale
    return student, teacher


def test_view_pairs_skip_same_view():
    assert view_pairs(2) == [(0, 1), (1, 0)]
    assert view_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    with pytest.raises(ValueError):
        view_pairs(1)


@pytest.mark.parametrize("n_crops", [2, 5])
def test_ema_loss_matches_explicit_loops(n_crops):
    batch, k, tau_s, tau_t = 3, 8, 0.1, 0.04
    student, teacher = _inputs(n_crops, batch, k)
    crit = DINOLoss(k, n_crops, student_temp=tau_s, centering="ema")
    center = torch.linspace(-1.0, 1.0, k).reshape(1, k)
    crit.center.copy_(center)
    out = crit(student, teacher, tau_t)
    targets = _ema_targets(teacher.tolist(), center[0].tolist(), tau_t)
    expected = _reference_loss(student.tolist(), teacher.tolist(), n_crops, tau_s, targets)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(out.teacher_probs, torch.tensor(targets), atol=1e-6)
    assert not out.teacher_probs.requires_grad


def test_none_centering_ignores_center():
    n_crops, batch, k, tau_s, tau_t = 3, 2, 6, 0.1, 0.07
    student, teacher = _inputs(n_crops, batch, k, seed=1)
    crit = DINOLoss(k, n_crops, student_temp=tau_s, centering="none")
    crit.center.fill_(5.0)  # must not be used
    targets = [_softmax([t / tau_t for t in row]) for row in teacher.tolist()]
    expected = _reference_loss(student.tolist(), teacher.tolist(), n_crops, tau_s, targets)
    assert crit(student, teacher, tau_t).loss.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_reaches_student_only():
    student, teacher = _inputs(3, 2, 8, seed=2)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    DINOLoss(8, 3)(student, teacher, 0.04).loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("centering, tau_t, n_crops", [("ema", 0.04, 4), ("none", 0.07, 2), ("sinkhorn", 0.05, 3), ("ema", 0.0, 3)])
def test_student_gradient_matches_finite_differences_of_the_loops(centering, tau_t, n_crops):
    """The hand-written backward (StudentCrossEntropy) against central differences of Eq. 3 by loops."""
    batch, k, tau_s, h = 2, 5, 0.1, 1e-4
    student, teacher = _inputs(n_crops, batch, k, seed=7, scale=0.5)
    crit = DINOLoss(k, n_crops, student_temp=tau_s, centering=centering)
    crit.center.copy_(torch.linspace(-0.3, 0.3, k).reshape(1, k))
    student.requires_grad_(True)
    out = crit(student, teacher, tau_t)
    out.loss.backward()
    targets = out.teacher_probs.tolist()  # the teacher side has no gradient: fixed targets
    rows = student.detach().double().tolist()
    expected = torch.zeros(n_crops * batch, k, dtype=torch.float64)
    for i in range(n_crops * batch):
        for j in range(k):
            plus = [r[:] for r in rows]
            minus = [r[:] for r in rows]
            plus[i][j] += h
            minus[i][j] -= h
            expected[i, j] = (_reference_loss(plus, teacher.tolist(), n_crops, tau_s, targets)
                              - _reference_loss(minus, teacher.tolist(), n_crops, tau_s, targets)) / (2 * h)
    assert torch.allclose(student.grad.double(), expected, rtol=1e-3, atol=1e-6), (student.grad, expected)


def test_loss_leaves_its_inputs_untouched_and_backward_runs_once():
    student, teacher = _inputs(3, 2, 8, seed=3)
    student_before, teacher_before = student.clone(), teacher.clone()
    student.requires_grad_(True)
    for centering in ("ema", "none"):
        out = DINOLoss(8, 3, centering=centering)(student, teacher, 0.04)
        out.loss.backward(retain_graph=True)
        assert torch.equal(student.detach(), student_before) and torch.equal(teacher, teacher_before)
        with pytest.raises(RuntimeError, match="ran twice"):
            out.loss.backward()


def test_center_update_closed_form_and_order():
    """c_n = (1-m) sum_j m^(n-1-j) mean(t_j) from c_0 = 0 (Eq. 4); the step's loss uses the previous center."""
    k, batch, m = 5, 3, 0.9
    crit = DINOLoss(k, 2, center_momentum=m)
    assert crit.center.shape == (1, k) and crit.center.abs().sum() == 0
    batches = [_inputs(2, batch, k, seed=s)[1] for s in range(3)]
    for t in batches:
        crit.update_center(t)
    expected = [0.0] * k
    for j, t in enumerate(batches):
        weight = (1 - m) * m ** (len(batches) - 1 - j)
        rows = t.tolist()
        for c in range(k):
            expected[c] += weight * sum(r[c] for r in rows) / len(rows)
    assert torch.allclose(crit.center[0], torch.tensor(expected), atol=1e-6)

    # the loss of a step sees the center from before that step's update
    student, teacher = _inputs(2, batch, k, seed=9)
    before = crit(student, teacher, 0.5).loss.item()
    center_before = crit.center[0].tolist()
    ref = _reference_loss(student.tolist(), teacher.tolist(), 2, 0.1, _ema_targets(teacher.tolist(), center_before, 0.5))
    assert before == pytest.approx(ref, rel=1e-5)
    crit.update_center(teacher)
    assert crit(student, teacher, 0.5).loss.item() != pytest.approx(before, rel=1e-4)


@pytest.mark.parametrize("centering", ["none", "sinkhorn"])
def test_only_ema_updates_center(centering):
    crit = DINOLoss(4, 2, centering=centering)
    crit.update_center(torch.ones(4, 4))
    assert crit.center.abs().sum() == 0


def test_zero_teacher_temp_gives_one_hot_of_centered_argmax():
    k, batch, n_crops = 4, 2, 3
    teacher = torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.0, 0.0, 3.0, 2.0], [0.5, 0.6, 0.0, 0.0], [2.0, 0.0, 0.0, 0.1]])
    student, _ = _inputs(n_crops, batch, k, seed=3)
    crit = DINOLoss(k, n_crops)
    crit.center.copy_(torch.tensor([[0.5, 0.0, 0.0, 0.0]]))  # moves row 0's argmax from 0 to 1
    out = crit(student, teacher, 0.0)
    hand = [1, 2, 1, 0]  # argmax of teacher - center, by hand
    assert out.teacher_probs.tolist() == [[1.0 if c == h else 0.0 for c in range(k)] for h in hand]
    # CE with a one-hot target is -log p at the target class
    terms = []
    for iq, v in [(0, 1), (0, 2), (1, 0), (1, 2)]:
        terms.append(
            sum(-_log_softmax([x / 0.1 for x in student[v * batch + b].tolist()])[hand[iq * batch + b]] for b in range(batch)) / batch
        )
    assert out.loss.item() == pytest.approx(sum(terms) / 4, rel=1e-5)


def _swav_sinkhorn_loop(scores, n_iterations):
    """SwAV's Algorithm (probability domain, float64 python): Q = exp(scores)^T (K x B), normalise by the total,
    then n times: rows (prototypes) to 1/K, columns (samples) to 1/B; return (Q * B)^T."""
    n, k = len(scores), len(scores[0])
    q = [[math.exp(scores[b][c]) for b in range(n)] for c in range(k)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(n_iterations):
        for c in range(k):
            s = sum(q[c])
            q[c] = [x / s / k for x in q[c]]
        for b in range(n):
            s = sum(q[c][b] for c in range(k))
            for c in range(k):
                q[c][b] = q[c][b] / s / n
    return [[q[c][b] * n for c in range(k)] for b in range(n)]


@pytest.mark.parametrize("n_iterations", [1, 3])
def test_sinkhorn_matches_plain_loop(n_iterations):
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    got = sinkhorn_knopp(scores, n_iterations)
    expected = torch.tensor(_swav_sinkhorn_loop(scores.tolist(), n_iterations), dtype=torch.float64)
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_sinkhorn_marginals():
    """Rows are distributions (exactly, the last step is the sample step); prototype masses tend to B/K."""
    g = torch.Generator().manual_seed(5)
    n, k = 12, 4
    scores = torch.randn(n, k, generator=g) * 2
    errors = []
    for iters in (1, 3, 30, 300):
        q = sinkhorn_knopp(scores, iters)
        assert torch.allclose(q.sum(dim=1), torch.ones(n), atol=1e-5)
        errors.append((q.sum(dim=0) - n / k).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[-1] < 1e-4
    # raw softmax is far from balanced on the same scores: the balancing is doing the work
    assert (torch.softmax(scores, 1).sum(0) - n / k).abs().max() > errors[0]


def test_sinkhorn_loss_and_overflow_safety():
    n_crops, batch, k, tau_t = 3, 4, 6, 0.04
    student, teacher = _inputs(n_crops, batch, k, seed=6, scale=4.0)  # teacher/tau_t up to ~300: exp overflows float32
    crit = DINOLoss(k, n_crops, centering="sinkhorn", sinkhorn_iterations=3)
    out = crit(student, teacher, tau_t)
    targets = _swav_sinkhorn_loop((teacher.double() / tau_t).tolist(), 3)
    assert torch.allclose(out.teacher_probs.double(), torch.tensor(targets, dtype=torch.float64), atol=1e-5)
    expected = _reference_loss(student.tolist(), teacher.tolist(), n_crops, 0.1, targets)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="sinkhorn"):
        crit(student, teacher, 0.0)


def test_invalid_options_name_the_valid_ones():
    with pytest.raises(ValueError, match="ema, sinkhorn, none"):
        DINOLoss(8, 2, centering="batch")
    with pytest.raises(ValueError):
        DINOLoss(8, 3)(torch.zeros(5, 8), torch.zeros(4, 8), 0.04)  # 5 rows is not 3 crops x B=2


def test_autocast_loss_runs_in_float32():
    student, teacher = _inputs(4, 3, 16, seed=7)
    crit = DINOLoss(16, 4)
    ref = crit(student, teacher, 0.04).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crit(student.bfloat16(), teacher.bfloat16(), 0.04).loss
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=5e-2)


def _entropy_kl_loops(targets, student, n_crops, tau_s):
    batch = len(targets) // 2
    h = sum(-sum(q * math.log(q) for q in row if q > 0) for row in targets) / len(targets)
    kls = []
    for iq, v in view_pairs(n_crops):
        tot = 0.0
        for b in range(batch):
            q = targets[iq * batch + b]
            logp = _log_softmax([x / tau_s for x in student[v * batch + b]])
            tot += sum(qk * (math.log(qk) - lk) for qk, lk in zip(q, logp) if qk > 0)
        kls.append(tot / batch)
    return h, sum(kls) / len(kls)


def test_entropy_plus_kl_is_the_loss():
    n_crops, batch, k = 4, 3, 10
    student, teacher = _inputs(n_crops, batch, k, seed=8)
    crit = DINOLoss(k, n_crops)
    crit.center.copy_(torch.randn(1, k))
    out = crit(student, teacher, 0.06)
    h, kl = entropy_and_kl(out.teacher_probs, student, 0.1, n_crops)
    h_ref, kl_ref = _entropy_kl_loops(out.teacher_probs.tolist(), student.tolist(), n_crops, 0.1)
    assert h == pytest.approx(h_ref, rel=1e-5) and kl == pytest.approx(kl_ref, rel=1e-5)
    assert h + kl == pytest.approx(out.loss.item(), rel=1e-5)
    assert kl > 0


@pytest.mark.parametrize("centering,tau_t", [("ema", 0.06), ("sinkhorn", 0.05), ("ema", 0.0)])
def test_training_step_diagnostics_equal_the_explicit_ones(centering, tau_t):
    """The step logs h(P_t) and KL = loss - h; both must equal the loops over the paper's pairs."""
    from dinolab.losses.diagnostics import kl_from_cross_entropy, teacher_entropy

    n_crops, batch, k = 5, 3, 12
    student, teacher = _inputs(n_crops, batch, k, seed=11)
    crit = DINOLoss(k, n_crops, centering=centering)
    crit.center.copy_(torch.randn(1, k))
    out = crit(student, teacher, tau_t)
    h = teacher_entropy(out.teacher_probs)
    kl = kl_from_cross_entropy(out.loss.item(), h)
    h_ref, kl_ref = _entropy_kl_loops(out.teacher_probs.tolist(), student.tolist(), n_crops, 0.1)
    assert h == pytest.approx(h_ref, abs=1e-5) and kl == pytest.approx(kl_ref, rel=1e-5, abs=1e-5)


def test_entropy_bounds_uniform_and_one_hot():
    n_crops, batch, k = 3, 2, 16
    student, teacher = _inputs(n_crops, batch, k, seed=9)
    uniform = torch.full((2 * batch, k), 1.0 / k)
    h, kl = entropy_and_kl(uniform, student, 0.1, n_crops)
    assert h == pytest.approx(math.log(k), rel=1e-6)
    one_hot = DINOLoss(k, n_crops)(student, teacher, 0.0).teacher_probs
    h0, kl0 = entropy_and_kl(one_hot, student, 0.1, n_crops)
    assert h0 == 0.0 and kl0 > 0
    # a student equal to the uniform teacher: no divergence
    _, kl_same = entropy_and_kl(uniform, torch.zeros(n_crops * batch, k), 0.1, n_crops)
    assert abs(kl_same) < 1e-6


def test_loss_of_non_contiguous_logits_equals_the_contiguous_one():
    """Logits that arrive as a transposed view (columns = rows) give the same loss and gradient."""
    student, teacher = _inputs(3, 2, 8, seed=5)
    a = student.clone().requires_grad_(True)
    b = student.t().contiguous().requires_grad_(True)  # (K, n_crops B); its .t() is a non-contiguous view
    crit = DINOLoss(8, 3)
    loss_a = crit(a, teacher, 0.04).loss
    loss_b = crit(b.t(), teacher, 0.04).loss
    loss_a.backward()
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b) and torch.allclose(a.grad, b.grad.t())


def test_in_place_softmaxes_equal_the_out_of_place_ops_bit_for_bit():
    from dinolab.losses.dino import _log_softmax_rows, _softmax_rows

    x = torch.randn(6, 70001, generator=torch.Generator().manual_seed(0)) * 30  # long odd rows: vector + tail paths
    for in_place, reference in ((_log_softmax_rows, torch.log_softmax), (_softmax_rows, torch.softmax)):
        buffer = x.clone()
        out = in_place(buffer)
        assert out.data_ptr() == buffer.data_ptr()  # on CPU the result lives in the input's memory
        assert torch.equal(out, reference(x, dim=-1))

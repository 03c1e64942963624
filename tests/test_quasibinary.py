"""The quasibinary head, its baselines and the calibration metrics (method §3)."""
import math

import numpy as np
import pytest
import torch

from models.calibration import auroc, ece, reliability_bins, top_k_f1, top_k_pairs
from models.quasibinary import TagHead, quasibinary_log_c, quasibinary_loss


def test_with_a_fixed_c_every_class_is_its_own_bernoulli_variable():
    head = TagHead(4, 3, "quasibinary").eval()
    head.log_c_avg.fill_(2.0)
    z = torch.tensor([[1.0, -1.0, 0.5], [3.0, 2.5, 2.2]])
    q = head.probabilities(z)
    assert torch.allclose(q[0], torch.exp(z[0] - 2.0))
    # One class's logit moves only that class's probability: no competition between classes ...
    z2 = z.clone()
    z2[0, 1] += 1.5
    q2 = head.probabilities(z2)
    assert torch.allclose(q2[0, [0, 2]], q[0, [0, 2]]) and q2[0, 1] > q[0, 1]
    # ... so an image can have several confident labels (sum > 1) or none (all small), each in [0, 1].
    assert q[1].sum() > 1.5 and (q[1] <= 1).all() and q[1].max() == 1.0
    assert q[0].max() < 0.5


def test_in_training_the_batch_confidences_add_up_to_its_number_of_labels():
    torch.manual_seed(0)
    z = torch.randn(6, 5) * 2
    y = torch.zeros(6, 5)
    y[0, 1] = y[2, 3] = y[2, 4] = y[5, 0] = 1.0          # 4 labels; rows 1, 3, 4 have none
    log_c = quasibinary_log_c(z, y)
    q = torch.exp(z - log_c)
    assert math.isclose(float(q.sum()), 4.0, rel_tol=1e-5)
    assert quasibinary_log_c(z, torch.zeros_like(y)) is None


def test_loss_matches_the_formula_and_penalises_q_above_one():
    z = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_c = quasibinary_log_c(z, y)
    log_q = z - log_c
    want = -((y * log_q - torch.clamp(log_q, min=0)).sum(1).mean())
    assert torch.allclose(quasibinary_loss(z, y, log_c), want)
    big = quasibinary_loss(z + torch.tensor([[0.0, 5.0], [0.0, 0.0]]), y, log_c)
    assert big > quasibinary_loss(z, y, log_c)


def test_a_batch_without_labels_still_trains_and_keeps_c():
    head = TagHead(3, 2, "quasibinary").train()
    x = torch.randn(4, 3)
    head.loss(head(x), torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    c = float(head.log_c_avg)
    loss = head.loss(head(x) + 50.0, torch.zeros(4, 2))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and float(head.log_c_avg) == c
    assert head.linear.weight.grad is not None


def test_c_avg_converges_on_a_toy_problem():
    """Two separable classes plus unlabelled noise: C_avg settles, and test-time q follows the labels."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = TagHead(2, 2, "quasibinary", momentum=0.1)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    history = []
    for step in range(600):
        k = rng.integers(0, 3, 64)                      # class 0, class 1, or no label (2)
        centres = np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])
        x = torch.tensor(centres[k] + rng.normal(0, 0.3, (64, 2)), dtype=torch.float32)
        y = torch.zeros(64, 2)
        y[k == 0, 0] = 1
        y[k == 1, 1] = 1
        head.train()
        loss = head.loss(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(head.log_c_avg))
    late = np.array(history[-100:])
    assert np.ptp(late) < 0.25 * max(1.0, abs(late.mean())), "C_avg keeps drifting"
    head.eval()
    q = head.probabilities(head(torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])))
    assert q[0, 0] > 0.5 and q[1, 1] > 0.5 and q[2].max() < 0.5 and q[0, 1] < 0.5


@pytest.mark.parametrize("kind", ["sigmoid", "softmax", "softmax-t"])
def test_baselines_share_the_interface(kind):
    head = TagHead(3, 4, kind)
    z = head(torch.randn(5, 3))
    y = torch.zeros(5, 4)
    y[0, 1] = y[1, 2] = y[1, 3] = 1
    loss = head.loss(z, y)
    loss.backward()
    p = head.probabilities(z.detach())
    assert p.shape == (5, 4) and (p >= 0).all() and (p <= 1).all()
    if kind != "sigmoid":
        assert torch.allclose(p.sum(1), torch.ones(5))
    with pytest.raises(ValueError):
        TagHead(3, 4, "bogus")


def test_temperature_fit_reduces_the_held_out_nll():
    torch.manual_seed(1)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (200,)), 3).float()
    z = 8.0 * (y + 0.8 * torch.randn(200, 3))           # overconfident logits
    head = TagHead(2, 3, "softmax-t")
    nll = lambda t: float(-(y * torch.log_softmax(z / t, -1)).sum(1).mean())  # noqa: E731
    t = head.fit_temperature(z, y)
    assert t > 1.5 and nll(t) < nll(1.0)


def test_ece_and_reliability_bins_on_a_hand_computed_example():
    conf = np.array([0.05, 0.15, 0.18, 0.55, 0.62, 0.95, 0.99, 1.0])
    ok = np.array([0, 1, 0, 1, 0, 1, 1, 1])
    bins = reliability_bins(conf, ok, 10)
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 1, 1, 0, 0, 3]
    assert bins[1]["confidence"] == pytest.approx(0.165) and bins[1]["accuracy"] == pytest.approx(0.5)
    assert bins[9]["accuracy"] == 1.0 and bins[9]["confidence"] == pytest.approx((0.95 + 0.99 + 1.0) / 3)
    # |0 - .05| * 1/8 + |.5 - .165| * 2/8 + |1 - .55| / 8 + |0 - .62| / 8 + |1 - .98| * 3/8
    want = (0.05 + 2 * 0.335 + 0.45 + 0.62 + 3 * 0.02) / 8
    assert ece(conf, ok, 10) == pytest.approx(want)


def test_auroc_top_k_pairs_and_f1():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4]])
    labels = np.array([[1, 0, 0], [0, 0, 1]])
    conf, hit = top_k_pairs(probs, labels, 2)
    assert conf.tolist() == [0.9, 0.6, 0.4, 0.3] and hit.tolist() == [True, False, True, False]
    # predicted (>= .5): {0, 1} for image 0, {} for image 1 -> tp 1, fp 1, fn 1
    assert top_k_f1(probs, labels, 2) == pytest.approx(2 / 4)


def test_paired_bootstrap_of_ece_is_centred_on_the_ece_and_pairs_the_heads():
    from models.calibration import bootstrap_ece

    rng = np.random.default_rng(3)
    labels = (rng.random((400, 6)) < 0.3).astype(np.float32)
    good = np.clip(labels * 0.7 + rng.random((400, 6)) * 0.3, 0, 1)     # informative
    bad = rng.random((400, 6))                                           # noise
    boot = bootstrap_ece({"good": good, "same": good.copy(), "bad": bad}, labels, k=4, n=200, seed=1)
    assert all(len(v) == 200 for v in boot.values())
    np.testing.assert_array_equal(boot["good"], boot["same"])              # same resamples for every head
    for name, p in (("good", good), ("bad", bad)):
        full = ece(*top_k_pairs(p, labels, 4), 10)
        assert abs(boot[name].mean() - full) < 3 * boot[name].std() + 1e-3
        assert boot[name].std() > 0
    assert (boot["good"] < boot["bad"]).mean() > 0.95

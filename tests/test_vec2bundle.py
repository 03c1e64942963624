"""Vec2Bundle (method §4): prototypes, trees, node probabilities, predictors."""
import numpy as np
import pytest
import torch

from models import vec2bundle as vb
from models.bundle_predictor import BundlePredictor


def _two_groups_tree():
    # classes 0, 1, 2 close together, 3, 4 far away
    pts = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.12], [5.0, 5.0], [5.1, 5.0]])
    return vb.linkage_tree(pts, "ward")


def test_rbf_logits_are_negative_squared_distances_and_the_multi_label_pair_a_kernel_ratio():
    layer = vb.RBFPrototypes(3, 4)
    assert layer.prototypes.std().item() == pytest.approx(0.005, rel=0.6)
    x = torch.randn(2, 3)
    want = -((x[:, None] - layer.prototypes[None]) ** 2).sum(-1)
    assert torch.allclose(layer(x), want, atol=1e-5)
    multi = vb.RBFPrototypes(3, 4, multi_label=True)
    with torch.no_grad():
        multi.prototypes.normal_()
    d = ((x[:, None, None] - multi.prototypes[None]) ** 2).sum(-1)
    k_pos, k_neg = torch.exp(-d[..., 0]), torch.exp(-d[..., 1])
    assert torch.allclose(torch.sigmoid(multi(x)), k_pos / (k_pos + k_neg), atol=1e-5)


def test_prototypes_are_kept_out_of_weight_decay():
    from models import tagger  # noqa: F401
    from models import registry

    model = registry.create("tagger-cpu", labels=("a", "b", "c"), head="rbf")
    groups = vb.prototype_param_groups(model, 1e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(model.head.prototypes) not in decayed and groups[1]["weight_decay"] == 0.0
    assert [id(p) for p in groups[1]["params"]] == [id(model.head.prototypes)]


def test_ward_on_prototypes_joins_nearby_classes_first():
    tree = _two_groups_tree()
    assert tree.nodes[tree.root] == (0, 1, 2, 3, 4)
    assert (0, 1, 2) in tree.nodes and (3, 4) in tree.nodes
    assert len(tree.nodes) == 2 * 5 - 1                      # a binary tree
    js = tree.to_json(["car/a", "car/b", "car/c", "boat/d", "boat/e"])
    assert js["name"] == "car ×3 + boat ×2" and len(js["children"]) == 2


def test_sum_rule_and_negation_rule_node_probabilities():
    tree = _two_groups_tree()
    p = np.array([[0.5, 0.2, 0.1, 0.15, 0.05]])
    P = vb.node_probabilities(tree, p)
    assert P[0, tree.root] == pytest.approx(1.0)
    assert P[0, tree.nodes.index((0, 1, 2))] == pytest.approx(0.8)
    pm = np.array([[0.9, 0.1, 0.0, 0.3, 0.0]])
    Pm = vb.node_probabilities(tree, pm, multi_label=True)
    assert Pm[0, tree.root] == pytest.approx(1.0)
    # non-decreasing towards the root: each node at least as probable as its children
    for j, kids in enumerate(tree.children):
        for c in kids:
            assert Pm[0, j] >= Pm[0, c] - 1e-12
    raw_root = 1 - 0.1 * 0.9 * 0.7
    assert Pm[0, tree.nodes.index((3, 4))] == pytest.approx(0.3 / raw_root)


def test_specificity_and_the_predictors():
    tree = _two_groups_tree()
    spec = tree.specificity()
    assert spec[0] == 1.0 and spec[tree.root] == 0.0
    assert vb.specificity(np.array([2]), 4)[0] == pytest.approx(0.5)
    p = np.array([[0.4, 0.35, 0.15, 0.06, 0.04]])
    P = vb.node_probabilities(tree, p)
    assert vb.max_rew(tree, P, 0.0)[0] == 0                     # theta 0: the most specific, most probable leaf
    assert tree.nodes[vb.max_rew(tree, P, 0.7)[0]] in [(0, 1), (0, 1, 2), (0, 2), (1, 2)]
    assert vb.max_rew(tree, P, 1.0)[0] == tree.root
    assert tree.nodes[vb.darts(tree, P, 0.0)[0]] != tree.nodes[tree.root]
    assert vb.darts(tree, P, 1e6)[0] == tree.root               # huge lambda: the safe answer
    chosen = vb.maxk_rew(tree, P, 0.05, 3)[0]
    sets = [set(tree.nodes[j]) for j in chosen]
    assert len(chosen) == 3 and all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1:])


def test_darts_lambda_fit_reaches_the_target_accuracy():
    rng = np.random.default_rng(0)
    tree = _two_groups_tree()
    targets = rng.integers(0, 5, 400)
    logits = rng.normal(0, 1, (400, 5))
    logits[np.arange(400), targets] += 1.0                      # a weak classifier
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    P = vb.node_probabilities(tree, p)
    base = vb.bundle_accuracy(tree, vb.darts(tree, P, 0.0), targets)[0]
    lam = vb.fit_darts_lambda(tree, P, targets, 0.9)
    acc, spec = vb.bundle_accuracy(tree, vb.darts(tree, P, lam), targets)
    assert base < 0.9 <= acc and 0 < spec < acc
    pts = vb.curve(tree, P, targets, "max-rew")
    assert pts[0][0] <= pts[-1][0] and pts[-1] == (1.0, 0.0)
    assert 0 < vb.area_under(pts) < 1 and vb.specificity_at(pts, 0.0) >= vb.specificity_at(pts, 0.95)


def test_baseline_trees_are_complete_hierarchies():
    rng = np.random.default_rng(1)
    n = 7
    probs = rng.dirichlet(np.ones(n), 50)
    confusion = rng.integers(0, 5, (n, n)).astype(float)
    for tree in (vb.kmeans_covariance_tree(probs), vb.spectral_confusion_tree(confusion),
                 vb.grouped_tree([[0, 1, 2], [3], [4, 5, 6]], n), vb.linkage_tree(rng.normal(size=(n, 3)), "single")):
        assert tree.nodes[tree.root] == tuple(range(n))
        leaves = [i for i, kids in enumerate(tree.children) if not kids]
        assert sorted(tree.nodes[i][0] for i in leaves) == list(range(n))
        for j, kids in enumerate(tree.children):
            if kids:
                assert sorted(sum((tree.nodes[c] for c in kids), ())) == list(tree.nodes[j])


def test_bundle_predictor_knob_from_specific_to_safe():
    tree = _two_groups_tree()
    meta = {"labels": ["car/a", "car/b", "car/c", "boat/d", "boat/e"], "tree_nodes": [list(n) for n in tree.nodes],
            "tree_children": tree.children, "darts": [{"tradeoff": 0.0, "lambda": 0.0}, {"tradeoff": 1.0, "lambda": 1e6}]}
    pred = BundlePredictor(None, meta)
    p = np.array([0.4, 0.35, 0.15, 0.06, 0.04])
    for predictor in ("top-k", "max-rew", "darts", "maxk-rew"):
        specific = pred.bundles(p, 0.0, predictor)
        safe = pred.bundles(p, 1.0, predictor)
        assert specific[0].specificity >= safe[0].specificity
        assert all(0 <= b.probability <= 1 + 1e-9 for b in specific + safe)
    assert pred.bundles(p, 0.0, "top-k")[0].labels == ["car/a"]
    assert len(pred.bundles(p, 1.0, "darts")[0].labels) == 5
    with pytest.raises(ValueError):
        pred.bundles(p, 0.5, "oracle")

"""The tagger's category filter of the search (warm_engine.tagged_categories / tag_filtered_ids)."""
from types import SimpleNamespace

import numpy as np
import pytest

from shape_library import warm_engine

LABELS = ("aeroplane", "boat", "car", "chair", "sofa", "table")


def shapes(cats):
    """Searchable shapes with ids 1, 2, ... of these categories."""
    return [SimpleNamespace(id=i + 1, category=c) for i, c in enumerate(cats)]


@pytest.fixture()
def tagger(monkeypatch):
    """A stand-in tagger whose probabilities the test sets."""
    t = SimpleNamespace(labels=LABELS, threshold=0.3, probs=np.zeros(len(LABELS)))
    t.probabilities = lambda image, box=None: t.probs
    monkeypatch.setattr(warm_engine, "get_tagger", lambda: t)
    return t


def _set(t, **p):
    t.probs = np.array([p.get(lab, 0.01) for lab in LABELS])


def test_found_categories_plus_those_the_tagger_cannot_rule_out(tagger):
    lib = shapes(["car", "car", "boat", "misc"])
    _set(tagger, car=0.9, sofa=0.4)
    assert warm_engine.tagged_categories(lib, None, None) == ["car", "misc"]
    assert warm_engine.tag_filtered_ids(lib, None, None, None) == ([1, 2, 4], ["car", "misc"])
    assert warm_engine.tag_filtered_ids(lib, None, None, [2, 3]) == ([2], ["car", "misc"])


def test_no_restriction_when_the_tagger_finds_nothing_here(tagger):
    lib = shapes(["car", "boat"])
    _set(tagger)                                           # nothing above the threshold
    assert warm_engine.tagged_categories(lib, None, None) is None
    _set(tagger, chair=0.8)                                # found, but the library has no chairs
    assert warm_engine.tagged_categories(lib, None, None) is None
    assert warm_engine.tag_filtered_ids(lib, None, None, [2]) == ([2], None)
    _set(tagger, car=0.8)                                  # the given shapes are all boats: left as given
    assert warm_engine.tag_filtered_ids(lib, None, None, [2]) == ([2], None)


def test_no_tagger_no_filter(monkeypatch):
    monkeypatch.setattr(warm_engine, "get_tagger", lambda: None)
    assert warm_engine.tag_filtered_ids(shapes(["car"]), None, None, None) == (None, None)

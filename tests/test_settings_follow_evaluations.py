"""The service's search defaults are the ones its evaluation tuned and reported (docs/viewpoint_prior.json):
retuning the prior without moving the defaults would make README's 'as served' rows describe another search."""
import json

from shape_library.settings import REPO_ROOT, Settings


def test_the_search_prior_defaults_are_the_tuned_ones():
    tuned = json.loads((REPO_ROOT / "docs" / "viewpoint_prior.json").read_text())
    s = Settings()
    assert (s.search_prior_weight, s.search_prior_flip_cost, s.search_prior_confidence_power) == (
        tuned["prior"]["weight"], tuned["prior"]["flip_cost"], tuned["prior"]["confidence_power"])
    spec = tuned["default_spec"]
    assert (s.search_prior_radius_deg, s.search_prior_flips) == (spec["radius_deg"], spec["flips"]) and spec["soft"]
    assert s.search_refine_top == tuned["refine_top"]

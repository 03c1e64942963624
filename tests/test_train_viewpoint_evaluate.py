"""`train_viewpoint --evaluate` measures given weights on the held-out photos `run` reports on, so a README
row comparing weights on one photo set comes from the repo's command."""
import json

import numpy as np

from models import checkpoint
from models.train_viewpoint import main


def test_evaluate_measures_the_shipped_weights_on_the_heldout_photos(tmp_path, capsys):
    weights = checkpoint.WEIGHTS_DIR / "viewpoint.pt"
    assert main(["--data-dir", str(tmp_path), "--eval-photos", "6", "--evaluate", str(weights)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["known"]["all"]["n"] == out["mirrored"]["all"]["n"] == 6
    assert 0.0 <= out["mirrored"]["all"]["acc_pi6"] <= 1.0 and np.isfinite(out["known"]["all"]["median_deg"])
    assert list(tmp_path.glob("photos-heldout-1000-6-64-*.npz")), "the held-out set is cached like run()'s"
    assert not list(tmp_path.glob("photos-train-*")), "evaluating renders no training photos"

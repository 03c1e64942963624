"""A network started from a copy of an older matching.pt still names the commit that wrote it."""
import shutil
import subprocess
from pathlib import Path

import pytest

from models import checkpoint

REPO = Path(__file__).resolve().parent.parent


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture
def in_git():
    if shutil.which("git") is None or _git("rev-parse", "HEAD").returncode:
        pytest.skip("not a git checkout")


def test_a_copy_of_a_committed_matching_pt_is_traced_to_a_commit_holding_those_bytes(in_git, tmp_path):
    copy = tmp_path / "start.pt"
    copy.write_bytes(subprocess.run(["git", "show", "HEAD:models/weights/matching.pt"], cwd=REPO, capture_output=True).stdout)
    commit = checkpoint.git_commit_holding(copy)
    assert commit
    blob = _git("hash-object", str(copy)).stdout.strip()
    assert _git("rev-parse", f"{commit}:models/weights/matching.pt").stdout.strip() == blob


def test_git_commit_for_finds_both_a_tracked_file_and_a_copy_of_it(in_git, tmp_path):
    tracked = checkpoint.WEIGHTS_DIR / "matching.pt"
    if _git("status", "--porcelain", "--", str(tracked)).stdout.strip():
        pytest.skip("matching.pt has uncommitted changes")
    assert checkpoint.git_commit_for(tracked) == checkpoint.git_commit_of(tracked) is not None
    copy = tmp_path / "start.pt"
    copy.write_bytes(tracked.read_bytes())
    assert checkpoint.git_commit_of(copy) is None                      # outside the repository
    assert checkpoint.git_commit_for(copy) == checkpoint.git_commit_holding(copy) is not None


def test_bytes_no_commit_wrote_are_not_traced(in_git, tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a committed network " * 10)
    assert checkpoint.git_commit_holding(other) is None


def test_a_card_records_a_path_flag_only_when_it_is_not_the_default():
    default = checkpoint.WEIGHTS_DIR / "matching.pt"
    assert checkpoint.flag_unless_default("--init-from", default, default) == ""
    assert checkpoint.flag_unless_default("--init-from", Path("var/start.pt"), default) == " --init-from var/start.pt"

"""Saving and loading shipped weights: name + config + state dict + metadata, float16 on disk."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from . import registry

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def save(model: torch.nn.Module, name: str, path: Path, meta: dict | None = None, half: bool = True) -> Path:
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config.__dict__)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"name": name, "config": cfg, "state_dict": state, "meta": meta or {}}, tmp)
    tmp.replace(path)
    return path


def load(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items()}
    model = registry.create(blob["name"], **cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    return model.to(device).eval(), blob.get("meta", {})


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def git_commit_of(path: Path) -> str | None:
    """The commit that last wrote `path` when it is a clean, tracked file of the repository (so a model
    card can say how to get that exact file back once it has been retrained), else None."""
    import subprocess

    p, repo = Path(path).resolve(), WEIGHTS_DIR.parent.parent
    if repo not in p.parents:
        return None
    try:
        rel = str(p.relative_to(repo))
        dirty = subprocess.run(["git", "status", "--porcelain", "--", rel], cwd=repo, capture_output=True, text=True, timeout=10)
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", rel], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if dirty.returncode or out.returncode or dirty.stdout.strip():
        return None
    return out.stdout.strip() or None


def git_commit_for(path: Path, tracked: str = "models/weights/matching.pt") -> str | None:
    """Where a start file's exact bytes can be got back from: the commit that last wrote it when it is a
    clean tracked file, else the commit that wrote those bytes to `tracked` (a copy taken out with `git show`)."""
    return git_commit_of(path) or git_commit_holding(path, tracked)


def git_commit_holding(path: Path, tracked: str = "models/weights/matching.pt") -> str | None:
    """The commit that wrote these exact bytes to `tracked` (e.g. an older matching.pt taken out with
    `git show`), so a network started from a copy still names where its start came from; None when no
    commit did."""
    import subprocess

    repo = WEIGHTS_DIR.parent.parent
    try:
        blob = subprocess.run(["git", "hash-object", str(Path(path).resolve())], cwd=repo, capture_output=True, text=True, timeout=30)
        if blob.returncode:
            return None
        blob_id = blob.stdout.strip()
        found = subprocess.run(["git", "log", "--format=%h", f"--find-object={blob_id}", "--", tracked], cwd=repo,
                               capture_output=True, text=True, timeout=60)
        for commit in reversed(found.stdout.split()):       # oldest first: the one that wrote it
            at = subprocess.run(["git", "rev-parse", f"{commit}:{tracked}"], cwd=repo, capture_output=True, text=True, timeout=10)
            if at.returncode == 0 and at.stdout.strip() == blob_id:
                return commit
    except (OSError, subprocess.SubprocessError):
        return None
    return None


def flag_unless_default(flag: str, path: Path, default: Path) -> str:
    """` --flag PATH` for a command line a model card records, or "" when `path` is the default."""
    return "" if Path(path).resolve() == Path(default).resolve() else f" {flag} {repo_path(path)}"


def repo_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it, for model cards that do not name one machine's folders."""
    p, repo = Path(path).resolve(), WEIGHTS_DIR.parent.parent
    return str(p.relative_to(repo)) if repo in p.parents else str(path)

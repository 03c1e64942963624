"""FAISS first stage of the search for large libraries.

Every indexed view gets a d-dimensional embedding derived from its stored render code
(models.embedding, trained so that the inner product with the photo's embedding ranks
views like the fused matching head); FAISS returns the top-N views of a photo and the
search re-ranks only those with the exact fused head.

* ids are ``shape_id * V + pose`` (V = 2,541 grid poses), so a shape is added or removed
  incrementally (``add_with_ids`` / ``remove_ids``) when the library changes;
* below ``ivf_min_vectors`` the index is exact (``IndexFlatIP``); above it an inverted
  file with 8-bit scalar-quantised vectors (``IndexIVFScalarQuantizer``, inner product),
  trained on the library present when it is built and re-trained once the library has
  grown ``retrain_factor`` times (HNSW is not used: FAISS cannot remove ids from it);
* it persists next to the codes, keyed by (view index, matching weights, embedding
  weights); a missing, damaged or mismatched file is rebuilt from the stored codes.

faiss-cpu here; where faiss-gpu is installed and CUDA is present the same code moves the
index to the GPU (``faiss.index_cpu_to_all_gpus``), flat and IVF alike.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def _faiss():
    import faiss

    return faiss


def _gpu(index):
    faiss = _faiss()
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        try:
            return faiss.index_cpu_to_all_gpus(index)
        except Exception:  # pragma: no cover - GPU builds only
            log.warning("faiss GPU transfer failed; staying on the CPU", exc_info=True)
    return index


def default_nlist(n_vectors: int) -> int:
    """IVF lists: a power of two near sqrt(n) / 4 (1,024 at 25 M views), at least 64: few lists keep
    the coarse assignment of 25 M vectors affordable on 2 cores; nprobe then scans ~nprobe/nlist."""
    return int(2 ** round(np.log2(max(64.0, np.sqrt(n_vectors) / 4))))


class AnnIndex:
    """A FAISS inner-product index over the view embeddings of a FeatureIndex's shapes."""

    def __init__(self, features, embedding, embedding_key: str, root: Path | None = None,
                 ivf_min_vectors: int = 1_000_000, nlist: int | None = None, nprobe: int = 32,
                 retrain_factor: float = 4.0):
        self.features = features
        self.embedding = embedding.eval()
        self.views_per_shape = len(features.views.config.grid)
        self.key = hashlib.sha256(f"{features.key}-{embedding_key}".encode()).hexdigest()[:16]
        self.root = Path(root) if root is not None else features.root.parent / f"ann-{self.key}"
        self.ivf_min_vectors = int(ivf_min_vectors)
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.retrain_factor = float(retrain_factor)
        self.dim = int(embedding.config.dim)
        self.index = None
        self.shapes: set[int] = set()
        self.trained_on = 0
        self.build_s = 0.0
        self._lock = threading.RLock()
        self._loaded = False

    # Embeddings ---------------------------------------------------------------
    @torch.no_grad()
    def view_embeddings(self, shape_id: int) -> np.ndarray:
        return np.ascontiguousarray(self.embedding.embed_render_batched(self.features.codes(shape_id)).numpy(), dtype=np.float32)

    @torch.no_grad()
    def photo_embedding(self, photo_code: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(self.embedding.embed_photo(photo_code.reshape(1, -1).float().cpu()).numpy(), dtype=np.float32)

    def ids_of(self, shape_id: int) -> np.ndarray:
        return np.arange(self.views_per_shape, dtype=np.int64) + int(shape_id) * self.views_per_shape

    # Index construction -------------------------------------------------------------
    def _new_index(self, n_vectors: int, sample: np.ndarray | None):
        faiss = _faiss()
        if n_vectors < self.ivf_min_vectors or sample is None:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), 0
        nlist = min(self.nlist or default_nlist(n_vectors), max(1, len(sample) // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.nprobe = min(self.nprobe, nlist)
        return index, n_vectors

    def build(self, shape_ids, vectors=None, progress: bool = False) -> None:
        """(Re)build from scratch for these shapes; `vectors(shape_id)` overrides the embeddings (benchmarks)."""
        t0 = time.perf_counter()
        shape_ids = sorted(int(s) for s in shape_ids)
        vectors = vectors or self.view_embeddings
        n = len(shape_ids) * self.views_per_shape
        sample = None
        if n >= self.ivf_min_vectors:
            # k-means sample: 64 vectors per list (at least 100k), spread over up to 512 random shapes.
            rng = np.random.default_rng(0)
            want = max(100_000, 64 * (self.nlist or default_nlist(n)))
            pick = rng.choice(len(shape_ids), min(len(shape_ids), 512), replace=False)
            per = min(self.views_per_shape, int(np.ceil(want / len(pick))))
            sample = np.concatenate([vectors(shape_ids[i])[rng.choice(self.views_per_shape, per, replace=False)] for i in pick])
        with self._lock:
            self.index, self.trained_on = self._new_index(n, sample)
            self.shapes = set()
            self._add(shape_ids, vectors, progress)
            self.build_s = time.perf_counter() - t0
            self._loaded = True

    def _add(self, shape_ids, vectors, progress: bool = False, batch_shapes: int = 64) -> None:
        from tqdm import tqdm

        todo = [s for s in shape_ids if s not in self.shapes]
        for i in tqdm(range(0, len(todo), batch_shapes), desc="ann index", unit="batch", disable=not progress):
            part = todo[i:i + batch_shapes]
            x = np.concatenate([vectors(s) for s in part])
            ids = np.concatenate([self.ids_of(s) for s in part])
            self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), ids)
            self.shapes.update(part)

    def add(self, shape_ids, vectors=None) -> None:
        with self._lock:
            self._add([int(s) for s in shape_ids], vectors or self.view_embeddings)

    def remove(self, shape_ids) -> None:
        faiss = _faiss()
        with self._lock:
            gone = [int(s) for s in shape_ids if int(s) in self.shapes]
            if not gone or self.index is None:
                return
            ids = np.concatenate([self.ids_of(s) for s in gone])
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            self.shapes.difference_update(gone)

    def sync(self, shape_ids, progress: bool = False) -> None:
        """Make the index hold exactly these shapes: load it, rebuild when missing/mismatched or
        outgrown, else add and remove incrementally; saves when anything changed."""
        wanted = {int(s) for s in shape_ids}
        with self._lock:
            if not self._loaded:
                self.load()
            n = len(wanted) * self.views_per_shape
            is_ivf = self.trained_on > 0
            outgrown = (not is_ivf and n >= self.ivf_min_vectors) or (is_ivf and n > self.retrain_factor * self.trained_on)
            if self.index is None or outgrown:
                self.build(wanted, progress=progress)
                self.save()
                return
            changed = bool(self.shapes - wanted) or bool(wanted - self.shapes)
            self.remove(self.shapes - wanted)
            self._add(sorted(wanted - self.shapes), self.view_embeddings, progress)
            if changed:
                self.save()

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    # Persistence --------------------------------------------------------------
    def _paths(self):
        return self.root / "index.faiss", self.root / "index.json"

    def save(self) -> None:
        faiss = _faiss()
        from .library import atomic_write

        with self._lock:
            if self.index is None:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            data = faiss.serialize_index(self.index).tobytes()
            f_index, f_meta = self._paths()
            atomic_write(f_index, data)
            meta = {"key": self.key, "shapes": sorted(self.shapes), "trained_on": self.trained_on, "dim": self.dim,
                    "sha256": hashlib.sha256(data).hexdigest(), "ntotal": self.ntotal, "build_s": round(self.build_s, 3)}
            atomic_write(f_meta, json.dumps(meta).encode())

    def load(self) -> bool:
        """Read the persisted index when its key and checksum match; False (and nothing loaded) otherwise."""
        faiss = _faiss()
        self._loaded = True
        f_index, f_meta = self._paths()
        try:
            meta = json.loads(f_meta.read_text())
            if meta.get("key") != self.key or meta.get("dim") != self.dim:
                return False
            data = f_index.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                return False
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (OSError, ValueError, RuntimeError):
            return False
        if int(index.ntotal) != meta.get("ntotal"):
            return False
        with self._lock:
            self.index = index
            if meta["trained_on"]:
                faiss.extract_index_ivf(self.index).nprobe = self.nprobe
            self.shapes = set(meta["shapes"])
            self.trained_on = int(meta["trained_on"])
            self.build_s = float(meta.get("build_s", 0.0))
        return True

    def memory_bytes(self) -> int:
        if self.index is None:
            return 0
        return int(_faiss().serialize_index(self.index).nbytes)

    # Search -------------------------------------------------------------------
    def search(self, photo_embedding: np.ndarray, n: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, ids) of the top-n views, best first; ids -1 pad when fewer exist."""
        faiss = _faiss()
        q = np.ascontiguousarray(np.asarray(photo_embedding, np.float32).reshape(-1, self.dim))
        with self._lock:
            if self.index is None or self.ntotal == 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            params = None
            if self.trained_on:
                params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe))
            D, I = self.index.search(q, int(min(n, self.ntotal)), params=params)
        return D, I


def first_stage(ann: AnnIndex, photo_code: torch.Tensor, n: int, allowed_shapes=None, pose_subset=None,
                nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(shape ids, poses) of the top-n views of the FAISS index for a photo code, restricted to the
    allowed shapes and poses (the index holds the whole library: it is searched deeper in proportion
    to the restriction, then filtered)."""
    V = ann.views_per_shape
    total = max(1, ann.ntotal)
    allowed = None if allowed_shapes is None else np.asarray(sorted(set(int(s) for s in allowed_shapes)), np.int64)
    n_allowed = (len(allowed) * V if allowed is not None else total) * (len(pose_subset) / V if pose_subset is not None else 1.0)
    k = int(min(total, n * min(64.0, max(1.0, total / max(1.0, n_allowed)))))
    _, I = ann.search(ann.photo_embedding(photo_code), k, nprobe)
    ids = I[0][I[0] >= 0]
    sids, poses = ids // V, ids % V
    keep = np.ones(len(ids), bool)
    if allowed is not None and len(allowed) * V < total:
        keep &= np.isin(sids, allowed)
    if pose_subset is not None:
        keep &= np.isin(poses, np.asarray(pose_subset))
    return sids[keep][:n], poses[keep][:n]

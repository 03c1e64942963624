"""The job store: jobs and their items in SQL, the single source of truth every executor works from.

Each item moves queued -> running -> done | failed (or cancelled). A worker *claims* an item
with one conditional UPDATE and records its result with another that only succeeds for the
claim it holds, so a task delivered twice (a redelivered message, a re-sent lost item) is
processed at most once at a time and recorded exactly once.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone

from sqlalchemy import (Float, ForeignKey, Integer, String, Text, and_, func, or_, select,
                        update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from shape_library.catalog import sql_engine

FINAL = ("done", "failed", "cancelled")
KINDS = ("search", "index", "reindex")


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    params: Mapped[str] = mapped_column(Text, default="{}")
    total: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[str] = mapped_column(Text, default="[]")
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Item(Base):
    __tablename__ = "job_items"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(500), default="")
    input: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass
class NewItem:
    name: str
    input: str
    params: dict | None = None


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


class JobStore:
    def __init__(self, url: str):
        self.engine = sql_engine(url)  # SQLite: WAL and a 30 s busy timeout, as the catalog
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    # Creating -----------------------------------------------------------------
    def create(self, kind: str, items: list[NewItem], params: dict | None = None, *, skipped: list[str] | None = None,
               owner: str | None = None, idempotency_key: str | None = None, job_id: str | None = None) -> tuple[str, bool]:
        """(job id, created). With an idempotency key seen before, the earlier job is returned."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        if idempotency_key:
            existing = self.by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing, False
        jid = job_id or uuid.uuid4().hex
        now = time.time()
        try:
            self._insert(jid, kind, items, params, skipped, owner, idempotency_key, now)
        except IntegrityError:
            if idempotency_key and (existing := self.by_idempotency_key(idempotency_key)) is not None:
                return existing, False  # a concurrent request with the same key won
            raise
        return jid, True

    def _insert(self, jid, kind, items, params, skipped, owner, idempotency_key, now) -> None:
        with self.session() as s, s.begin():
            s.add(Job(id=jid, kind=kind, params=json.dumps(params or {}), total=len(items), skipped=json.dumps(skipped or []),
                      owner=owner, idempotency_key=idempotency_key or None, created_at=now,
                      status="queued" if items else "done", finished_at=None if items else now))
            s.flush()
            s.add_all(Item(job_id=jid, idx=i, name=it.name, input=it.input, params=json.dumps(it.params or {}),
                           enqueued_at=now) for i, it in enumerate(items))

    def by_idempotency_key(self, key: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(Job.id).where(Job.idempotency_key == key))

    # Reading ------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def counts(self, job_id: str) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)).all()
        return {status: n for status, n in rows}

    def item(self, job_id: str, idx: int) -> Item | None:
        with self.session() as s:
            return s.get(Item, (job_id, idx))

    def items(self, job_id: str, offset: int = 0, limit: int | None = None) -> list[Item]:
        with self.session() as s:
            q = select(Item).where(Item.job_id == job_id).order_by(Item.idx).offset(offset)
            if limit is not None:
                q = q.limit(limit)
            return list(s.scalars(q))

    def jobs(self, limit: int = 20, owner: str | None = None) -> list[Job]:
        with self.session() as s:
            q = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if owner is not None:
                q = q.where(Job.owner == owner)
            return list(s.scalars(q))

    def status_counts(self) -> dict[str, int]:
        with self.session() as s:
            return {st: n for st, n in s.execute(select(Job.status, func.count()).group_by(Job.status)).all()}

    def queue_depth(self) -> int:
        """Items waiting or running in jobs that are still open."""
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Item).join(Job, Job.id == Item.job_id)
                            .where(Item.status.in_(("queued", "running")), Job.status.in_(("queued", "running")))) or 0

    def describe(self, job: Job, counts: dict[str, int] | None = None) -> dict:
        counts = counts if counts is not None else self.counts(job.id)
        done, failed = counts.get("done", 0), counts.get("failed", 0)
        finished = done + failed + counts.get("cancelled", 0)
        return {
            "job_id": job.id, "kind": job.kind, "status": job.status, "owner": job.owner,
            "progress": {"done": done, "failed": failed, "cancelled": counts.get("cancelled", 0), "total": job.total,
                         "fraction": round(finished / job.total, 4) if job.total else 1.0},
            "params": json.loads(job.params), "skipped": json.loads(job.skipped), "error": job.error,
            "created_at": _iso(job.created_at), "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        }

    # Working ------------------------------------------------------------------
    def claim(self, job_id: str, idx: int, worker: str, lease_s: float) -> int | None:
        """Take an item for processing; returns the attempt number (the claim token) or None."""
        now = time.time()
        with self.session() as s, s.begin():
            job_status = s.scalar(select(Job.status).where(Job.id == job_id))
            if job_status is None or job_status in FINAL:
                return None
            res = s.execute(
                update(Item)
                .where(Item.job_id == job_id, Item.idx == idx,
                       or_(Item.status == "queued", and_(Item.status == "running", Item.lease_until < now)))
                .values(status="running", attempts=Item.attempts + 1, lease_until=now + lease_s, worker=worker)
            )
            if res.rowcount != 1:
                return None
            s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(status="running", started_at=now))
            return s.scalar(select(Item.attempts).where(Item.job_id == job_id, Item.idx == idx))

    def finish(self, job_id: str, idx: int, token: int, *, result: dict | None = None, error: str | None = None) -> bool:
        """Record the outcome of the claim `token`; False when that claim was lost (the item was re-queued)."""
        now = time.time()
        with self.session() as s, s.begin():
            res = s.execute(
                update(Item)
                .where(Item.job_id == job_id, Item.idx == idx, Item.status == "running", Item.attempts == token)
                .values(status="failed" if error is not None else "done", finished_at=now, lease_until=None,
                        result=None if result is None else json.dumps(result), error=error)
            )
            if res.rowcount != 1:
                return False
        self._close_if_finished(job_id)
        return True

    def release(self, job_id: str, idx: int, token: int, error: str, *, counted: bool = True) -> bool:
        """Give a claim back after a transient error, so the item is tried again. `counted=False`: the
        item waited for something on its way (shapes being indexed), it did not fail, so the claim is
        not an attempt."""
        with self.session() as s, s.begin():
            res = s.execute(update(Item).where(Item.job_id == job_id, Item.idx == idx, Item.status == "running",
                                               Item.attempts == token)
                            .values(status="queued", lease_until=None, error=error, enqueued_at=time.time(),
                                    **({} if counted else {"attempts": Item.attempts - 1})))
            return res.rowcount == 1

    def _close_if_finished(self, job_id: str) -> None:
        now = time.time()
        with self.session() as s, s.begin():
            open_items = s.scalar(select(func.count()).select_from(Item)
                                  .where(Item.job_id == job_id, Item.status.in_(("queued", "running"))))
            if open_items:
                return
            counts = dict(s.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)).all())
            status = "failed" if counts.get("failed", 0) and not counts.get("done", 0) else "done"
            s.execute(update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
                      .values(status=status, finished_at=now))

    def cancel(self, job_id: str) -> bool:
        """Cancel an open job: queued items are dropped, running ones finish. False when already final."""
        now = time.time()
        with self.session() as s, s.begin():
            res = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
                            .values(status="cancelled", finished_at=now))
            if res.rowcount != 1:
                return False
            s.execute(update(Item).where(Item.job_id == job_id, Item.status == "queued")
                      .values(status="cancelled", finished_at=now))
            return True

    def open_items(self, *, include_running: bool) -> list[tuple[str, int]]:
        """(job, item) pairs of open jobs still to do: what an executor starting up must (re)schedule."""
        states = ("queued", "running") if include_running else ("queued",)
        with self.session() as s:
            rows = s.execute(select(Item.job_id, Item.idx).join(Job, Job.id == Item.job_id)
                             .where(Job.status.in_(("queued", "running")), Item.status.in_(states))
                             .order_by(Job.created_at, Item.idx)).all()
        return [(j, i) for j, i in rows]

    def requeue_running(self) -> int:
        """After a crash of the only executor: every running item is queued again."""
        with self.session() as s, s.begin():
            return s.execute(update(Item).where(Item.status == "running")
                             .values(status="queued", lease_until=None, enqueued_at=time.time())).rowcount

    def stale_items(self, requeue_after_s: float) -> list[tuple[str, int]]:
        """Items presumed lost: running past their lease, or queued and not picked up for too long."""
        now = time.time()
        with self.session() as s, s.begin():
            rows = s.execute(select(Item.job_id, Item.idx).join(Job, Job.id == Item.job_id)
                             .where(Job.status.in_(("queued", "running")),
                                    or_(and_(Item.status == "running", Item.lease_until < now),
                                        and_(Item.status == "queued", Item.enqueued_at < now - requeue_after_s)))).all()
            for j, i in rows:  # a lost claim is void: whoever held it can no longer record a result
                s.execute(update(Item).where(Item.job_id == j, Item.idx == i)
                          .values(status="queued", lease_until=None, enqueued_at=now))
        return [(j, i) for j, i in rows]

    def mark_enqueued(self, pairs: list[tuple[str, int]]) -> None:
        now = time.time()
        with self.session() as s, s.begin():
            for j, i in pairs:
                s.execute(update(Item).where(Item.job_id == j, Item.idx == i).values(enqueued_at=now))


@lru_cache(maxsize=8)
def open_store(url: str) -> JobStore:
    return JobStore(url)

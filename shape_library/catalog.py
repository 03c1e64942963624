"""The shape catalog: one SQLite row per shape, the source of truth the index is rebuilt from."""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import DateTime, Integer, String, Text, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class IndexStatus(str, enum.Enum):
    pending = "pending"
    indexing = "indexing"
    indexed = "indexed"
    failed = "failed"


class Base(DeclarativeBase):
    pass


class Shape(Base):
    __tablename__ = "shapes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(100), index=True)
    subtype: Mapped[str] = mapped_column(String(300), default="")
    license: Mapped[str] = mapped_column(String(100), default="")
    attribution: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(Text, default="")
    source_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    mesh_sha256: Mapped[str] = mapped_column(String(64))
    mesh_file: Mapped[str] = mapped_column(String(300))
    vertices: Mapped[int] = mapped_column(Integer)
    faces: Mapped[int] = mapped_column(Integer)
    index_status: Mapped[str] = mapped_column(String(20), default=IndexStatus.pending.value)
    index_key: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "subtype": self.subtype,
            "license": self.license,
            "attribution": self.attribution,
            "vertices": self.vertices,
            "faces": self.faces,
            "indexed": self.index_status == IndexStatus.indexed.value,
            "index_status": self.index_status,
        }


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def sql_engine(url: str):
    """An SQLAlchemy engine; for SQLite its folder is created and WAL plus a busy timeout set, so
    several processes (API, workers) share the file."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Catalog:
    def __init__(self, path: Path | str):
        url = str(path) if "://" in str(path) else f"sqlite:///{Path(path)}"
        self.engine = sql_engine(url)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    def list(self, category: str | None = None) -> list[Shape]:
        with self.session() as s:
            q = select(Shape).order_by(Shape.id)
            if category:
                q = q.where(Shape.category == category)
            return list(s.scalars(q))

    def get(self, shape_id: int) -> Shape | None:
        with self.session() as s:
            return s.get(Shape, shape_id)

    def by_source_hash(self, sha: str) -> Shape | None:
        with self.session() as s:
            return s.scalars(select(Shape).where(Shape.source_sha256 == sha)).first()

    def add(self, **fields) -> Shape:
        with self.session() as s:
            shape = Shape(**fields)
            s.add(shape)
            s.commit()
            return shape

    def set_status(self, shape_id: int, status: IndexStatus, index_key: str | None = None) -> None:
        with self.session() as s:
            shape = s.get(Shape, shape_id)
            if shape is None:
                return
            shape.index_status = status.value
            if index_key is not None:
                shape.index_key = index_key
            s.commit()

    def remove(self, shape_id: int) -> Shape | None:
        with self.session() as s:
            shape = s.get(Shape, shape_id)
            if shape is not None:
                s.delete(shape)
                s.commit()
            return shape

    def categories(self) -> list[str]:
        with self.session() as s:
            return sorted(set(s.scalars(select(Shape.category))))

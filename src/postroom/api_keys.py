"""API keys: only a SHA-256 digest is stored; the key itself is shown once, at creation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from postroom.db import Base, UTCDateTime, new_id, utcnow
from postroom.errors import PostroomError

KEY_PREFIX = "pr_"


class ApiKey(Base):
    """A named bearer key for the REST API."""

    __tablename__ = "postroom_api_keys"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # The key is 32 random bytes, so an unsalted fast hash is enough: it cannot be guessed.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiKeyNotFound(PostroomError, LookupError):
    """No API key has the given id."""


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key: ``secret`` is the only copy of the key there will ever be."""

    key: ApiKey
    secret: str


def key_digest(secret: str) -> str:
    """The SHA-256 hex digest stored for ``secret``: what a key is looked up (and cached) by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str) -> NewApiKey:
    """Create a key named ``name``."""
    if not name.strip() or len(name) > 100:
        raise ValueError("an API key name is 1-100 characters")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id(),
        name=name.strip(),
        digest=key_digest(secret),
        hint=secret[:10],
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return NewApiKey(key=key, secret=secret)


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The live key matching ``secret``, or ``None``."""
    return find_live_key(session, key_digest(secret))


def find_live_key(session: Session, digest: str) -> ApiKey | None:
    """The live key whose digest is ``digest`` (from ``key_digest``), or ``None``."""
    key = session.scalars(select(ApiKey).where(ApiKey.digest == digest)).first()
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.digest, digest):
        return None
    return key


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key by id (revoking twice is harmless); ``ApiKeyNotFound`` if there is none.

    A running API refuses the key within ``postroom.api.auth.KEY_CACHE_SECONDS`` of the commit:
    each API process trusts a key it has checked for that long.
    """
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    key = session.get(ApiKey, key_id, populate_existing=True)
    if key is None:
        raise ApiKeyNotFound(f"no API key with id {key_id!r}")
    return key

"""Attachments and inline images: validated at enqueue, stored apart from the message row.

Content is stored once per distinct SHA-256 (the same PDF sent to a thousand people is one
blob), either in a table or in a folder, by setting; message rows only reference it.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from postroom.addresses import reject_line_breaks
from postroom.db import Base
from postroom.errors import MessageRejected, MessageTooLarge

_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]{1,200}$")
MAX_FILENAME_CHARS = 255
MAX_ATTACHMENTS = 100


@dataclass(frozen=True)
class Attachment:
    """A file to send with a message; ``inline`` ones are images the HTML shows by ``cid:``."""

    filename: str
    content: bytes
    content_type: str | None = None
    inline: bool = False
    content_id: str | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **options: Any) -> Attachment:
        """Read a file from disk; the filename defaults to the file's name."""
        file_path = Path(path)
        return cls(
            filename=options.pop("filename", file_path.name),
            content=file_path.read_bytes(),
            **options,
        )

    @classmethod
    def from_file(cls, file: IO[bytes], filename: str, **options: Any) -> Attachment:
        """Read an open binary file object to its end."""
        return cls(filename=filename, content=file.read(), **options)


@dataclass(frozen=True)
class CheckedAttachment:
    """A validated attachment with its resolved content type and digest."""

    filename: str
    content: bytes
    content_type: str
    inline: bool
    content_id: str | None
    sha256: str


def _coerce(item: Attachment | Mapping[str, Any] | os.PathLike[str], field: str) -> Attachment:
    if isinstance(item, Attachment):
        return item
    if isinstance(item, os.PathLike):
        try:
            return Attachment.from_path(item)
        except OSError as error:
            raise MessageRejected(
                f"cannot read {os.fspath(item)!r}: {error.strerror}", field=field
            ) from None
    if isinstance(item, Mapping):
        try:
            return Attachment(**item)
        except TypeError as error:
            raise MessageRejected(str(error), field=field) from None
    raise MessageRejected("give an Attachment, a path or a mapping", field=field)


def check_attachments(
    items: Sequence[Attachment | Mapping[str, Any] | os.PathLike[str]] | None,
    *,
    max_attachment_bytes: int,
) -> list[CheckedAttachment]:
    """Validate every attachment; raise a ``MessageRejected`` subclass naming the bad one."""
    if not items:
        return []
    if len(items) > MAX_ATTACHMENTS:
        raise MessageTooLarge(f"at most {MAX_ATTACHMENTS} attachments", field="attachments")
    checked = [
        _check(_coerce(item, f"attachments[{i}]"), f"attachments[{i}]", max_attachment_bytes)
        for i, item in enumerate(items)
    ]
    content_ids = [a.content_id for a in checked if a.content_id]
    if len(content_ids) != len(set(content_ids)):
        raise MessageRejected("content ids must be unique within a message", field="attachments")
    return checked


def _check(attachment: Attachment, field: str, max_bytes: int) -> CheckedAttachment:
    filename = attachment.filename
    if not isinstance(filename, str) or not filename.strip() or len(filename) > MAX_FILENAME_CHARS:
        raise MessageRejected(
            f"a filename is 1-{MAX_FILENAME_CHARS} characters", field=f"{field}.filename"
        )
    reject_line_breaks(filename, field=f"{field}.filename")
    if "/" in filename or "\\" in filename:
        raise MessageRejected("a filename cannot contain a path", field=f"{field}.filename")
    content = attachment.content
    if not isinstance(content, bytes | bytearray | memoryview):
        raise MessageRejected("content must be bytes", field=f"{field}.content")
    content = bytes(content)
    if len(content) > max_bytes:
        raise MessageTooLarge(
            f"{len(content)} bytes; the limit per attachment is {max_bytes}",
            field=f"{field}.content",
        )
    content_type = (attachment.content_type or guess_content_type(filename)).lower()
    if not _CONTENT_TYPE.match(content_type):
        raise MessageRejected(
            f"{content_type!r} is not a content type", field=f"{field}.content_type"
        )
    content_id = attachment.content_id
    if attachment.inline and not content_id:
        content_id = filename
    if content_id is not None:
        content_id = content_id.strip("<>")
        if not _CONTENT_ID.match(content_id):
            raise MessageRejected(
                "a content id is printable ASCII without spaces", field=f"{field}.content_id"
            )
    return CheckedAttachment(
        filename=filename,
        content=content,
        content_type=content_type,
        inline=attachment.inline,
        content_id=content_id,
        sha256=hashlib.sha256(content).hexdigest(),
    )


def guess_content_type(filename: str) -> str:
    """The content type for a file name, ``application/octet-stream`` when unknown."""
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    # a .gz or .bz2 is sent as what it is on disk, not as what it unpacks to
    if guessed is None or encoding is not None:
        return "application/octet-stream"
    return guessed


class AttachmentBlob(Base):
    """Attachment content kept in the database, once per distinct digest."""

    __tablename__ = "postroom_attachment_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class StoredAttachment(Base):
    """One attachment of one message: its name, type, disposition and the digest of its content."""

    __tablename__ = "postroom_attachments"
    __table_args__ = (Index("ix_postroom_attachments_message", "message_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("postroom_messages.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(MAX_FILENAME_CHARS))
    content_type: Mapped[str] = mapped_column(String(255))
    inline: Mapped[bool]
    content_id: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


def list_attachments(session: Session, message_id: str) -> list[StoredAttachment]:
    """A message's attachments in order, without their content."""
    query = (
        select(StoredAttachment)
        .where(StoredAttachment.message_id == message_id)
        .order_by(StoredAttachment.position)
    )
    return list(session.scalars(query))


class AttachmentStore:
    """Where attachment content lives: the blob table, or a folder of files named by digest."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory

    def save(
        self, session: Session, message_id: str, attachments: Iterable[CheckedAttachment]
    ) -> None:
        """Store the content (once per digest) and one reference row per attachment."""
        rows = []
        for position, attachment in enumerate(attachments):
            self._save_content(session, attachment)
            rows.append(
                {
                    "message_id": message_id,
                    "position": position,
                    "filename": attachment.filename,
                    "content_type": attachment.content_type,
                    "inline": attachment.inline,
                    "content_id": attachment.content_id,
                    "size": len(attachment.content),
                    "sha256": attachment.sha256,
                }
            )
        if rows:
            session.execute(insert(StoredAttachment), rows)

    def _save_content(self, session: Session, attachment: CheckedAttachment) -> None:
        if self.directory is None:
            dialect = session.get_bind().dialect.name
            insert_blob = postgresql.insert if dialect == "postgresql" else sqlite.insert
            session.execute(
                insert_blob(AttachmentBlob)
                .values(
                    sha256=attachment.sha256,
                    size=len(attachment.content),
                    content=attachment.content,
                )
                .on_conflict_do_nothing(index_elements=["sha256"])
            )
            return
        path = self._path(attachment.sha256)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(attachment.content)
        # written before the message row commits, so a committed message never lacks its file
        partial.replace(path)

    def load(
        self, session: Session, message_ids: Sequence[str]
    ) -> dict[str, list[CheckedAttachment]]:
        """Every attachment of ``message_ids`` with its content, in order, in two queries."""
        rows = session.scalars(
            select(StoredAttachment)
            .where(StoredAttachment.message_id.in_(message_ids))
            .order_by(StoredAttachment.message_id, StoredAttachment.position)
        ).all()
        contents = self._contents(session, {row.sha256 for row in rows})
        loaded: dict[str, list[CheckedAttachment]] = {}
        for row in rows:
            loaded.setdefault(row.message_id, []).append(
                CheckedAttachment(
                    filename=row.filename,
                    content=contents[row.sha256],
                    content_type=row.content_type,
                    inline=row.inline,
                    content_id=row.content_id,
                    sha256=row.sha256,
                )
            )
        return loaded

    def _contents(self, session: Session, digests: set[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        if self.directory is None:
            blobs = session.execute(
                select(AttachmentBlob.sha256, AttachmentBlob.content).where(
                    AttachmentBlob.sha256.in_(digests)
                )
            )
            return {sha256: bytes(content) for sha256, content in blobs}
        return {digest: self._path(digest).read_bytes() for digest in digests}

    def _path(self, sha256: str) -> Path:
        assert self.directory is not None
        return self.directory / sha256[:2] / sha256

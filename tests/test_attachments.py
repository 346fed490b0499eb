from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from postroom.attachments import (
    Attachment,
    AttachmentBlob,
    StoredAttachment,
    check_attachments,
    guess_content_type,
)
from postroom.client import Postroom
from postroom.errors import HeaderInjection, MessageRejected, MessageTooLarge

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40


def checked(*items, max_attachment_bytes=1_000_000):
    return check_attachments(list(items), max_attachment_bytes=max_attachment_bytes)


def test_attachments_come_from_bytes_file_objects_and_paths(tmp_path: Path):
    path = tmp_path / "ticket.pdf"
    path.write_bytes(PDF)
    result = checked(
        Attachment("notes.txt", b"hello"),
        Attachment.from_file(io.BytesIO(PDF), "certificate.pdf"),
        path,
        {"filename": "logo.png", "content": b"\x89PNG", "inline": True},
    )
    assert [(a.filename, a.content_type) for a in result] == [
        ("notes.txt", "text/plain"),
        ("certificate.pdf", "application/pdf"),
        ("ticket.pdf", "application/pdf"),
        ("logo.png", "image/png"),
    ]
    assert result[2].content == PDF
    # an inline image without a content id is referenced by its file name
    assert result[3].content_id == "logo.png"


@pytest.mark.parametrize(
    ("item", "error", "field"),
    [
        (Attachment("a\r\nb.txt", b"x"), HeaderInjection, "attachments[0].filename"),
        (Attachment("../etc/passwd", b"x"), MessageRejected, "attachments[0].filename"),
        (Attachment("", b"x"), MessageRejected, "attachments[0].filename"),
        (Attachment("a.txt", "text"), MessageRejected, "attachments[0].content"),  # type: ignore[arg-type]
        (Attachment("a.bin", b"x" * 2000), MessageTooLarge, "attachments[0].content"),
        (
            Attachment("a.bin", b"x", content_type="not a type"),
            MessageRejected,
            "attachments[0].content_type",
        ),
        (
            Attachment("a.png", b"x", inline=True, content_id="has space"),
            MessageRejected,
            "attachments[0].content_id",
        ),
        (Path("/nonexistent/file.pdf"), MessageRejected, "attachments[0]"),
        (42, MessageRejected, "attachments[0]"),
    ],
)
def test_bad_attachments_are_rejected_naming_the_field(item, error, field):
    with pytest.raises(error) as raised:
        checked(item, max_attachment_bytes=1000)
    assert raised.value.field == field


def test_duplicate_content_ids_are_rejected():
    with pytest.raises(MessageRejected, match="unique"):
        checked(
            Attachment("a.png", b"1", inline=True, content_id="x"),
            Attachment("b.png", b"2", inline=True, content_id="x"),
        )


def test_content_types_are_guessed_and_compressed_files_stay_opaque():
    assert guess_content_type("report.csv") == "text/csv"
    assert guess_content_type("archive.tar.gz") == "application/octet-stream"
    assert guess_content_type("no-extension") == "application/octet-stream"


def count(client, table):
    with client.sessions() as session:
        return session.scalar(select(func.count()).select_from(table))


@pytest.mark.parametrize("storage", ["database", "folder"])
def test_identical_content_is_stored_once_and_delivered_to_each_message(
    make_settings, database_url, outbox, tmp_path, storage
):
    folder = tmp_path / "files" if storage == "folder" else None
    settings = make_settings(database_url=database_url, attachment_dir=folder)
    client = Postroom(settings, publish=lambda s, i: None)
    ids = [
        client.send(
            f"u{i}@example.com",
            "Your certificate",
            text="attached",
            attachments=[Attachment("certificate.pdf", PDF)],
        ).id
        for i in range(3)
    ]
    assert count(client, StoredAttachment) == 3
    if folder is None:
        assert count(client, AttachmentBlob) == 1
    else:
        assert count(client, AttachmentBlob) == 0
        assert [p.read_bytes() for p in folder.rglob("*") if p.is_file()] == [PDF]
    assert client.deliver(ids).sent == 3
    from postroom.transports.memory import mailbox

    delivered = mailbox(settings.transport_url.removeprefix("memory://"))
    assert len(delivered) == 3
    for envelope in delivered:
        (part,) = list(envelope.email.iter_attachments())
        assert part.get_filename() == "certificate.pdf"
        assert part.get_content() == PDF
    client.close()


def test_a_message_over_the_total_size_limit_is_rejected_and_nothing_is_stored(
    make_settings, sqlite_url
):
    client = Postroom(
        make_settings(database_url=sqlite_url, max_message_bytes=4096), publish=lambda s, i: None
    )
    with pytest.raises(MessageTooLarge) as raised:
        client.send("a@example.com", "Hi", text="x", attachments=[Attachment("big.pdf", PDF)])
    assert raised.value.field == "attachments"
    assert count(client, StoredAttachment) == 0
    assert count(client, AttachmentBlob) == 0
    client.close()

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage

import pytest

from postroom.devinbox import DevInbox, get_caught, list_caught, store
from tests.servers import free_port


@pytest.fixture
def inbox(tmp_path):
    """A running dev inbox and its port."""
    port = free_port()
    server = DevInbox(tmp_path / "inbox", port=port)
    server.start()
    yield server, port
    server.stop()


def email_to(*recipients: str, subject: str = "Hello") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Postroom <postroom@example.com>"
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content("It works.")
    return message


def test_the_dev_inbox_catches_mail_sent_over_smtp(inbox):
    server, port = inbox
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        refused = smtp.send_message(
            email_to("you@example.com", subject="Héllo"),
            from_addr="bounce@example.com",
            to_addrs=["you@example.com", "bcc@example.com"],
        )
    assert refused == {}
    [caught] = list_caught(server.directory)
    assert caught.mail_from == "bounce@example.com"
    assert caught.rcpt_tos == ["you@example.com", "bcc@example.com"]
    assert caught.parsed["Subject"] == "Héllo"
    assert caught.parsed.get_content().strip() == "It works."
    again = get_caught(server.directory, caught.id)
    assert again is not None and again.raw == caught.raw


def test_caught_messages_list_newest_first_up_to_the_limit(tmp_path):
    ids = []
    for n in range(3):
        data = email_to("b@example.com", subject=str(n)).as_bytes()
        ids.append(store(tmp_path, "a@example.com", ["b@example.com"], data).id)
        # ids order by millisecond; within one millisecond their order is random
        time.sleep(0.002)
    listed = list_caught(tmp_path, limit=2)
    assert [caught.id for caught in listed] == [ids[2], ids[1]]
    assert [caught.parsed["Subject"] for caught in listed] == ["2", "1"]


def test_an_unknown_or_malformed_id_finds_nothing(tmp_path):
    store(tmp_path, "a@example.com", ["b@example.com"], email_to("b@example.com").as_bytes())
    assert get_caught(tmp_path, "01ZZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert get_caught(tmp_path, "../secret") is None


def test_an_inbox_folder_that_does_not_exist_lists_nothing(tmp_path):
    assert list_caught(tmp_path / "missing") == []

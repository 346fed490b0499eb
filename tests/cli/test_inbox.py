from __future__ import annotations

import time
from email.message import EmailMessage

import pytest
from typer.testing import CliRunner

from postroom.cli.main import main_app
from postroom.devinbox import store


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / ".postroom"


def invoke(data_dir, *args):
    env = {"POSTROOM_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return CliRunner().invoke(main_app(), ["inbox", *args], env=env)


def catch(data_dir, subject: str, *, html: bool = False) -> str:
    message = EmailMessage()
    message["From"] = "Postroom <postroom@example.com>"
    message["To"] = "you@example.com"
    message["Subject"] = subject
    if html:
        message.set_content("<p>Only <b>HTML</b></p>", subtype="html")
    else:
        message.set_content("It works.")
    caught = store(
        data_dir / "inbox", "bounce@example.com", ["you@example.com"], message.as_bytes()
    )
    time.sleep(0.002)  # ids order by millisecond
    return caught.id


def test_inbox_lists_caught_messages_newest_first(data_dir):
    first = catch(data_dir, "First")
    second = catch(data_dir, "Second")
    result = invoke(data_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.index(second) < result.stdout.index(first)
    assert "Second" in result.stdout and "you@example.com" in result.stdout
    limited = invoke(data_dir, "--limit", "1")
    assert second in limited.stdout and first not in limited.stdout


def test_inbox_shows_one_message_with_its_headers_and_text(data_dir):
    caught_id = catch(data_dir, "Hello from postroom")
    result = invoke(data_dir, caught_id)
    assert result.exit_code == 0, result.output
    assert "Subject: Hello from postroom" in result.stdout
    assert "envelope from  bounce@example.com" in result.stdout
    assert "--- text/plain ---" in result.stdout
    assert "It works." in result.stdout


def test_inbox_shows_the_html_part_when_there_is_no_text(data_dir):
    result = invoke(data_dir, catch(data_dir, "Styled", html=True))
    assert "--- text/html ---" in result.stdout
    assert "<p>Only <b>HTML</b></p>" in result.stdout


def test_inbox_prints_the_raw_source(data_dir):
    caught_id = catch(data_dir, "Raw")
    result = invoke(data_dir, caught_id, "--raw")
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(b"From: Postroom <postroom@example.com>")
    assert b"X-Postroom-Envelope" not in result.stdout_bytes


def test_an_empty_inbox_says_so(data_dir):
    result = invoke(data_dir)
    assert result.exit_code == 0
    assert "is empty" in result.stdout


def test_an_unknown_id_is_an_error(data_dir):
    catch(data_dir, "There")
    result = invoke(data_dir, "01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert result.exit_code == 2
    assert "holds no message with id" in result.stderr

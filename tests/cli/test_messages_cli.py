from __future__ import annotations

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from postroom.cli.main import main_app
from postroom.client import Postroom
from postroom.events import append_event
from postroom.messages import Message


@pytest.fixture
def cli_env(settings, tmp_path):
    # nothing listens on this broker: the CLI's send must still store the message
    from tests.servers import free_port

    return {
        "POSTROOM_DATABASE_URL": settings.database_url,
        "POSTROOM_DATA_DIR": str(tmp_path / ".postroom"),
        "POSTROOM_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "POSTROOM_TRANSPORT_URL": settings.transport_url,
    }


def invoke(env, *args):
    return CliRunner().invoke(main_app(), list(args), env=env)


def stored(settings) -> int:
    client = Postroom(settings)
    with client.sessions() as session:
        count = session.scalar(select(func.count()).select_from(Message))
    client.close()
    return count


def test_send_prints_the_id_and_status_and_status_shows_the_events(cli_env, settings):
    result = invoke(
        cli_env,
        "send",
        "--to",
        "a@example.com",
        "--subject",
        "Hi",
        "--text",
        "hello",
        "--header",
        "X-Campaign: spring",
        "--tag",
        "cli",
    )
    assert result.exit_code == 0, result.output
    message_id, status = result.stdout.split()
    assert status == "queued"
    shown = invoke(cli_env, "status", message_id)
    assert shown.exit_code == 0
    assert message_id in shown.stdout and "queued" in shown.stdout
    cancelled = invoke(cli_env, "cancel", message_id)
    assert cancelled.stdout.split() == [message_id, "cancelled"]
    again = invoke(cli_env, "cancel", message_id)
    assert again.exit_code == 2
    assert "cannot become cancelled" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--to", "not-an-address", "--subject", "Hi", "--text", "x"],
        ["--to", "a@example.com", "--subject", "Hi\r\nBcc: x@example.com", "--text", "x"],
        ["--to", "a@example.com", "--subject", "Hi", "--text", "x", "--header", "X-A: b\nc"],
        [
            "--to",
            "a@example.com",
            "--subject",
            "Hi",
            "--text",
            "x",
            "--from",
            "Ann\n<a@example.com>",
        ],
        ["--to", "a@example.com", "--subject", "Hi"],
        ["--to", "a@example.com", "--subject", "Hi", "--text", "x", "--stream", "marketing"],
        ["--to", "a@example.com", "--subject", "Hi", "--text", "x", "--send-at", "tomorrow"],
        ["--to", "a@example.com", "--subject", "Hi", "--text", "x", "--header", "no colon"],
    ],
)
def test_bad_input_exits_with_code_2_and_stores_nothing(cli_env, settings, args):
    result = invoke(cli_env, "send", *args)
    assert result.exit_code == 2, result.output
    assert "error" in result.stderr
    assert stored(settings) == 0


def test_an_unknown_message_id_exits_with_code_2(cli_env):
    result = invoke(cli_env, "status", "0" * 26)
    assert result.exit_code == 2
    assert "no message" in result.stderr


def test_invalid_settings_exit_with_code_2_naming_the_variable(cli_env):
    result = invoke({**cli_env, "POSTROOM_LEASE_SECONDS": "-1"}, "status", "x")
    assert result.exit_code == 2
    assert "POSTROOM_LEASE_SECONDS" in result.stderr


def test_status_and_errors_show_bracketed_text_as_it_is(cli_env, settings):
    # Rich would read these as markup: "[urgent]" vanish as a style, "[/]" raise
    subject = "[urgent] reset [/] now"
    sent = invoke(cli_env, "send", "--to", "a@example.com", "--subject", subject, "--text", "x")
    assert sent.exit_code == 0, sent.output
    message_id = sent.stdout.split()[0]
    reply = "421 4.7.0 [/] try [bold]later[/bold]"
    client = Postroom(settings)
    with client.sessions() as session, session.begin():
        append_event(session, message_id, "deferred", detail=reply, code=421)
    client.close()

    shown = invoke({**cli_env, "COLUMNS": "200"}, "status", message_id)  # the row unwrapped
    assert shown.exit_code == 0, shown.output
    assert repr(subject) in shown.stdout
    assert "[/] try [bold]later[/bold]" in shown.stdout

    header = ["--header", "[/] no colon"]
    refused = invoke(cli_env, "send", "--to", "a@example.com", "--subject", "Hi", *header)
    assert refused.exit_code == 2
    assert "got '[/] no colon'" in refused.stderr
    assert stored(settings) == 1

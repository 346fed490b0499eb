"""`postroom keys`: create, list and revoke API keys."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from postroom import api_keys
from postroom.cli.main import main_app
from postroom.client import Postroom


@pytest.fixture
def cli_env(sqlite_url, tmp_path, monkeypatch):
    # A .env in the working directory would be read by Settings(): run from an empty folder.
    monkeypatch.chdir(tmp_path)
    return {"POSTROOM_DATABASE_URL": sqlite_url, "POSTROOM_DATA_DIR": str(tmp_path / ".postroom")}


@pytest.fixture
def db(sqlite_url, make_settings):
    client = Postroom(make_settings(database_url=sqlite_url))
    yield client
    client.close()


def invoke(env, *args):
    return CliRunner().invoke(main_app(), ["keys", *args], env=env)


def unwrapped(text):
    # Rich wraps stderr at the terminal width (80 columns under CliRunner).
    return " ".join(text.split())


def live_key(db, secret):
    with db.sessions() as session:
        return api_keys.authenticate(session, secret)


def test_create_prints_a_working_key_alone_on_the_last_line(cli_env, db):
    result = invoke(cli_env, "create", "--name", "web app")

    assert result.exit_code == 0, result.output
    secret = result.stdout.splitlines()[-1]
    assert secret.startswith(api_keys.KEY_PREFIX)
    assert secret.strip() == secret
    key = live_key(db, secret)
    assert key is not None
    assert key.name == "web app"
    assert key.id in result.stdout


def test_list_shows_every_key_but_never_the_key_itself(cli_env, db):
    first = invoke(cli_env, "create", "--name", "web").stdout.splitlines()[-1]
    # a name Rich would take for markup is shown as it is
    second = invoke(cli_env, "create", "--name", "[red]cron[/]").stdout.splitlines()[-1]

    result = invoke({**cli_env, "COLUMNS": "200"}, "list")  # rows unwrapped

    assert result.exit_code == 0, result.output
    for secret, name in ((first, "web"), (second, "[red]cron[/]")):
        key = live_key(db, secret)
        assert key.id in result.stdout
        assert key.hint in result.stdout
        assert name in result.stdout
        assert secret not in result.stdout


def test_revoke_stops_the_key_working(cli_env, db):
    secret = invoke(cli_env, "create", "--name", "old").stdout.splitlines()[-1]
    key_id = live_key(db, secret).id

    result = invoke(cli_env, "revoke", key_id)

    assert result.exit_code == 0, result.output
    assert key_id in result.stdout
    assert live_key(db, secret) is None
    listed = invoke(cli_env, "list").stdout
    revoked_row = next(line for line in listed.splitlines() if key_id in line)
    assert revoked_row.count("-") >= 4, "the revoked column shows a date"


def test_revoking_an_unknown_key_exits_2_with_a_message(cli_env):
    result = invoke(cli_env, "revoke", "01NOSUCHKEY00000000000000")

    assert result.exit_code == 2
    assert "no API key with id '01NOSUCHKEY00000000000000'" in unwrapped(result.stderr)
    assert result.stdout == ""


def test_creating_a_key_without_a_name_exits_2_and_stores_nothing(cli_env, db):
    result = invoke(cli_env, "create", "--name", "   ")

    assert result.exit_code == 2
    assert "1-100 characters" in unwrapped(result.stderr)
    assert result.stdout == ""
    with db.sessions() as session:
        assert api_keys.list_keys(session) == []

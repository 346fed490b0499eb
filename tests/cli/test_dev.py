from __future__ import annotations

import shlex

from sqlalchemy.orm import Session

from postroom import api_keys
from postroom.cli.dev import (
    api_base_url,
    child_env,
    dev_transport_url,
    ensure_dev_key,
    first_email_curl,
)
from postroom.db import create_db_engine
from postroom.settings import Settings


def test_the_dev_key_is_kept_private_and_reused_until_it_is_revoked(make_settings, sqlite_url):
    settings = make_settings(database_url=sqlite_url)
    settings.data_dir.mkdir()
    key = ensure_dev_key(settings)
    key_file = settings.data_dir / "dev-api-key"
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert ensure_dev_key(settings) == key

    engine = create_db_engine(sqlite_url)
    with Session(engine) as session:
        stored = api_keys.authenticate(session, key)
        assert stored is not None
        api_keys.revoke_key(session, stored.id)
        session.commit()
    engine.dispose()
    replacement = ensure_dev_key(settings)
    assert replacement != key
    assert key_file.read_text().strip() == replacement


def test_the_worker_delivers_to_the_dev_inbox_unless_a_transport_is_configured(tmp_path):
    left_default = Settings(_env_file=None, data_dir=tmp_path, dev_inbox_port=2525)
    assert dev_transport_url(left_default) == "smtp://127.0.0.1:2525"
    configured = Settings(
        _env_file=None, data_dir=tmp_path, transport_url="smtp://mail.example.com:587"
    )
    assert dev_transport_url(configured) == "smtp://mail.example.com:587"


def test_children_get_absolute_paths_the_embedded_broker_and_the_dev_inbox(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path / ".postroom", dev_inbox_port=2525)
    env = child_env(settings)
    assert env["POSTROOM_DATA_DIR"] == str((tmp_path / ".postroom").resolve())
    assert env["POSTROOM_BROKER_URL"] == f"redis+socket://{tmp_path.resolve()}/.postroom/redis.sock"
    assert env["POSTROOM_TRANSPORT_URL"] == "smtp://127.0.0.1:2525"
    assert env["POSTROOM_DEV_INBOX"] == "true"


def test_the_curl_line_survives_a_shell(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path, api_host="0.0.0.0", api_port=8001)
    assert api_base_url(settings) == "http://127.0.0.1:8001"
    words = shlex.split(first_email_curl(api_base_url(settings), "pr_abc-_1"))
    assert words[:5] == ["curl", "-s", "-X", "POST", "http://127.0.0.1:8001/v1/messages"]
    assert "Authorization: Bearer pr_abc-_1" in words
    assert words[-1] == (
        '{"to": "you@example.com", "subject": "Hello from postroom", "text": "It works."}'
    )


def test_dev_refuses_an_unknown_worker_log_level_before_starting_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from postroom.cli import dev
    from postroom.cli.main import main_app

    started: list[object] = []
    monkeypatch.setattr(dev, "run_dev", lambda settings, **options: started.append(options) or 0)
    env = {"POSTROOM_DATA_DIR": str(tmp_path / ".postroom")}
    refused = CliRunner().invoke(main_app(), ["dev", "--worker-loglevel", "chatty"], env=env)
    assert refused.exit_code == 2
    assert "'chatty' is not one of" in refused.output
    assert started == []

    accepted = CliRunner().invoke(main_app(), ["dev", "--worker-loglevel", "info"], env=env)
    assert accepted.exit_code == 0, accepted.output
    assert started == [{"worker_loglevel": dev.LogLevel.INFO}]

from __future__ import annotations

from pathlib import Path

from postroom.settings import Settings, redact_url


def test_settings_read_prefixed_and_nested_variables_from_an_env_file(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "POSTROOM_DATABASE_URL=postgresql://app:pw@db/postroom\n"
        "POSTROOM_TRANSPORT_URL=smtp://user:s3cret@mail.example.com:587?security=starttls\n"
        "POSTROOM_RETRY__MAX_ATTEMPTS=9\n"
        "POSTROOM_LEASE_SECONDS=45\n"
    )
    settings = Settings(_env_file=env_file)
    assert settings.database_url == "postgresql://app:pw@db/postroom"
    assert settings.retry.max_attempts == 9
    assert settings.lease_seconds == 45


def test_secrets_in_urls_never_print():
    settings = Settings(
        _env_file=None,
        database_url="postgresql://app:dbpass@db/postroom",
        broker_url="redis://:brokerpass@redis:6379/0",
        transport_url="smtp://user:s3cret@mail.example.com:587",
    )
    shown = repr(settings) + str(settings)
    for secret in ("dbpass", "brokerpass", "s3cret"):
        assert secret not in shown
    assert "smtp://user:***@mail.example.com:587" in shown


def test_redact_url_leaves_urls_without_passwords_alone():
    assert redact_url("sqlite:///./postroom.db") == "sqlite:///./postroom.db"
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


def test_without_a_broker_url_the_embedded_socket_is_used(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.resolved_broker_url == f"redis+socket://{tmp_path.resolve()}/redis.sock"
    assert (
        Settings(_env_file=None, broker_url="redis://h:1/0").resolved_broker_url == "redis://h:1/0"
    )

"""Settings: read once from ``POSTROOM_*`` environment variables (and ``.env``) per entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from postroom.dkim import DkimKey
from postroom.limits import TransportLimits
from postroom.retry import RetryPolicy
from postroom.transports.registry import DEFAULT, FailoverRule, Route, check_transport_name

REDACTED = "***"
_URL_FIELDS = ("database_url", "broker_url", "transport_url", "limits_redis_url")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to log or print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _redact_or_hide(url: str) -> str:
    # A malformed URL cannot be redacted, only hidden: with an unescaped '/' in a password
    # (smtp://user:pa/ss@host) urlsplit finds no password at all and the '@' lands in the path.
    try:
        parts = urlsplit(url)
        redacted = redact_url(url)
    except ValueError:
        return REDACTED
    return REDACTED if "@" in url and "@" not in parts.netloc else redacted


class Settings(BaseSettings):
    """Everything postroom can be configured with; each default lives on its field."""

    # hide_input_in_errors: a validation error would otherwise quote the offending input, such
    # as a whole DKIM key entry with its private key or a URL with its password.
    model_config = SettingsConfigDict(
        env_prefix="POSTROOM_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,
    )

    database_url: str = "sqlite:///./postroom.db"
    # None: the embedded Redis that `postroom dev` supervises, on a socket in data_dir.
    broker_url: str | None = None
    data_dir: Path = Path(".postroom")
    transport_url: str = "smtp://127.0.0.1:1025"
    default_from: str = "Postroom <postroom@example.com>"

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    lease_seconds: float = Field(default=120.0, gt=0)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    # A transactional task whose batch was full and sent in full claims the next batch itself,
    # for up to this long, instead of leaving it to the next task: that saves the 2-3 ms Celery
    # spends between tasks (12% more messages/s from one worker process, measured). Bulk tasks
    # never do: a process busy with one would hold back a password reset that just arrived.
    # 0 turns it off.
    transactional_drain_seconds: float = Field(default=0.5, ge=0, le=60)
    dispatch_interval_seconds: float = Field(default=2.0, gt=0)
    # A due message whose task was published this long ago without being claimed is
    # published again: the broker may have lost the task (restart without persistence, purge).
    redispatch_after_seconds: float = Field(default=60.0, gt=0)
    dispatch_limit: int = Field(default=10_000, ge=1)
    recover_interval_seconds: float = Field(default=30.0, gt=0)
    broker_timeout_seconds: float = Field(default=4.0, gt=0)
    # Delivery tasks published by send() are at least this far apart; ids sent in between
    # travel together. An isolated send() is published at once. Each publish holds the
    # interpreter for about 0.3 ms, stalling whichever send() runs then: at 0.02 s that was
    # 1 send in 20 under load (send() p99 1.85 ms), at 0.1 s 1 in 100 (p99 1.56-1.60 ms).
    publish_interval_seconds: float = Field(default=0.1, ge=0, le=5)

    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_recipients: int = Field(default=1000, ge=1)
    # None: attachment content is kept in the database; a folder keeps it as files instead
    # (one per distinct content), which keeps a large database small.
    attachment_dir: Path | None = None

    # A template render past these limits fails with TemplateError instead of running on.
    template_max_output_chars: int = Field(default=1_000_000, ge=1000)
    template_max_seconds: float = Field(default=2.0, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    dev_inbox_port: int = Field(default=1025, ge=0, le=65535)
    # Serve /v1/dev/inbox; `postroom dev` turns it on.
    dev_inbox: bool = False
    # Signing keys per sender domain, as JSON: [{"domain": …, "selector": …, "private_key_path": …}]
    dkim: list[DkimKey] = Field(default_factory=list)

    # ── Global limits per transport (postroom.limits) ───────────────────────────────────────
    # By transport name, as JSON: {"smtp": {"rate_per_second": 10, "daily_quota": 2000,
    # "timezone": "Europe/Paris", "max_connections": 4}}; a transport not listed is unlimited.
    limits: dict[str, TransportLimits] = Field(default_factory=dict)
    # Where workers share the limits; None: the broker when it is Redis (the embedded one
    # included), else each process keeps its own. See limits.redis_url_for_limits.
    limits_redis_url: str | None = None
    # ── end of limits ───────────────────────────────────────────────────────────────────────

    # ── Named transports, routing and failover ──────────────────────────────────────────────
    # More transports by name, as JSON: {"ses": "smtp://user:pw@email-smtp…:587"}. The one
    # named "default" is transport_url. Names are checked against each other (routes and
    # failover naming unknown transports, failover cycles) when a TransportRegistry is built.
    transports: dict[str, str] = Field(default_factory=dict)
    # First match wins, else "default": [{"stream": "bulk", "transport": "ses"}]
    routes: list[Route] = Field(default_factory=list)
    # By primary: {"default": {"to": "backup", "after": 5, "cool_down_seconds": 60}}
    failover: dict[str, FailoverRule] = Field(default_factory=dict)
    # Per transport per worker process: connections kept open, and how long one may sit idle.
    pool_max_size: int = Field(default=4, ge=1, le=1000)
    pool_idle_seconds: float = Field(default=30.0, gt=0)

    @field_validator("transports")
    @classmethod
    def _check_transport_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            check_transport_name(name)
            if name == DEFAULT:
                raise ValueError(f"{DEFAULT!r} is transport_url; give the others other names")
        return value

    @property
    def transport_urls(self) -> dict[str, str]:
        """Every transport's URL by name, ``default`` (``transport_url``) first."""
        return {DEFAULT: self.transport_url, **self.transports}

    # ── end of named transports ─────────────────────────────────────────────────────────────

    @property
    def embedded_broker_socket(self) -> Path:
        """Where the embedded Redis listens when no broker URL is configured."""
        return self.data_dir.resolve() / "redis.sock"

    @property
    def resolved_broker_url(self) -> str:
        """The broker to publish to and consume from."""
        if self.broker_url:
            return self.broker_url
        return f"redis+socket://{self.embedded_broker_socket}"

    @property
    def dev_inbox_dir(self) -> Path:
        """The folder the dev inbox writes caught messages into, one ``.eml`` file each."""
        return self.data_dir / "inbox"

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                yield name, redact_url(value)
            elif name == "transports" and isinstance(value, dict):
                yield name, {key: _redact_or_hide(url) for key, url in value.items()}
            else:
                yield name, value

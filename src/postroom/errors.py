"""Errors raised by postroom.

PostroomError
├── ConfigurationError              at startup: bad settings, unknown transport scheme
│   └── DatabaseNotMigrated         the database lacks postroom's tables: run `postroom migrate`
├── DatabaseUnavailable             the database did not answer; retrying later can succeed
│   └── BatchInterrupted            (batches.py) mid-batch; the items before ``index`` are stored
├── MessageRejected (ValueError)    the caller's input; nothing was stored
│   ├── InvalidAddress  ├── HeaderInjection  ├── MessageTooLarge  ├── TemplateError
│   ├── UnknownTransport            ``transport=`` names no configured transport
│   └── BatchItemRejected           (batches.py) one item of ``send_batch``; earlier items stored
├── MessageNotFound (LookupError)
├── TemplateNotFound (LookupError)  no version of that template in the requested locale chain
├── InvalidTransition               e.g. cancel() on a message that was already sent
└── DeliveryError                   raised by transports, handled in delivery.py
    ├── TemporaryFailure            → deferred, retried with backoff
    └── PermanentFailure            → failed; a hard bounce also suppresses the address

Every ``str()`` here is safe to log: no credentials and no message bodies.
"""

from __future__ import annotations


class PostroomError(Exception):
    """Base class of every error postroom raises on purpose."""


class ConfigurationError(PostroomError):
    """A setting is missing or malformed, or names something postroom does not know."""


class DatabaseNotMigrated(ConfigurationError):
    """The database lacks tables or columns this postroom needs: run ``postroom migrate``."""


class DatabaseUnavailable(PostroomError):
    """The database did not take the work: a refused or lost connection, a locked SQLite file,
    no pooled connection free in time. Retrying later can succeed.

    A send interrupted this way may have been stored, because a connection can drop after the
    commit and before its answer. Retried with the same ``idempotency_key``, it is stored once.
    ``driver_error`` names the driver's exception class, for logs.
    """

    def __init__(self, detail: str, *, driver_error: str) -> None:
        super().__init__(
            f"{detail}; retry later (a send retried with the same idempotency_key is stored once)"
        )
        self.detail = detail
        self.driver_error = driver_error


class MessageRejected(PostroomError, ValueError):
    """The caller's input was refused; nothing was stored.

    ``field`` names the offending input (``"to[1]"``, ``"headers.X-Tag"``) so the REST layer
    can answer 422 naming it.
    """

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.detail = detail
        self.field = field


class InvalidAddress(MessageRejected):
    """An address that does not parse or whose domain cannot receive mail."""


class HeaderInjection(MessageRejected):
    """A header value (subject, display name, custom header) contains CR or LF."""


class MessageTooLarge(MessageRejected):
    """A body, subject, header or recipient list exceeds the configured limits."""


class TemplateError(MessageRejected):
    """A template failed to compile or render; ``template``, ``version`` and ``line`` say where."""

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        template: str | None = None,
        version: int | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(detail, field=field)
        self.template = template
        self.version = version
        self.line = line


class UnknownTransport(MessageRejected):
    """An explicit ``transport=`` names no configured transport; ``name`` is the one asked for."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no transport is named {name!r}", field="transport")
        self.name = name


class MessageNotFound(PostroomError, LookupError):
    """No message has the given id."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"no message with id {message_id!r}")
        self.message_id = message_id


class TemplateNotFound(PostroomError, LookupError):
    """No stored template matches the name, locale and version asked for."""

    def __init__(self, name: str, *, locale: str | None = None, version: int | None = None) -> None:
        where = f" for locale {locale!r}" if locale else ""
        at = f" at version {version}" if version is not None else ""
        super().__init__(f"no template {name!r}{where}{at}")
        self.name = name
        self.locale = locale
        self.version = version


class InvalidTransition(PostroomError):
    """The requested change of status is not allowed from the message's current status."""

    def __init__(self, message_id: str, current: str, target: str) -> None:
        super().__init__(f"message {message_id} is {current}; it cannot become {target}")
        self.message_id = message_id
        self.current = current
        self.target = target


class DeliveryError(PostroomError):
    """A transport could not hand a message over."""

    def __init__(self, detail: str, *, transport: str, code: int | None = None) -> None:
        super().__init__(f"{transport}: {detail}")
        self.detail = detail
        self.transport = transport
        self.code = code  # SMTP reply code or HTTP status, recorded on the event row


class TemporaryFailure(DeliveryError):
    """Worth retrying later: SMTP 4xx, timeouts, refused or dropped connections."""


class PermanentFailure(DeliveryError):
    """Retrying cannot help: SMTP 5xx, a rejected sender or recipient."""

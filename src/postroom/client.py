"""Postroom(settings): the object behind ``postroom.send`` and every worker task."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from postroom import batches, claims, messages
from postroom.attachments import Attachment, AttachmentStore, StoredAttachment, list_attachments
from postroom.database_errors import database_errors, translates_database_errors
from postroom.db import EngineCache, publish_after_commit, utcnow
from postroom.delivery import Deliverer, DeliveryReport
from postroom.dkim import DkimSigner
from postroom.drafts import Content, Draft, Limits, Stream, build_draft
from postroom.errors import MessageRejected, TemplateError, TemplateNotFound
from postroom.events import MessageEvent, list_events
from postroom.html_text import html_to_text
from postroom.limits import Limiter, limiter_for, redis_url_for_limits
from postroom.messages import Message, MessageStatus
from postroom.mime import Sign
from postroom.publishing import BackgroundPublisher, Publish, publish_or_leave_to_sweep
from postroom.settings import Settings
from postroom.tasks import DeliveryPublisher, create_celery
from postroom.transports import Transport
from postroom.transports.registry import RegistryConfig, TransportRegistry

if TYPE_CHECKING:
    from celery import Celery

    from postroom.templates import Rendered, Template, TemplateRenderer

logger = logging.getLogger(__name__)


class Postroom:
    """Puts messages in the outbox and, inside workers, delivers them.

    ``settings`` defaults to ``Settings()`` read from the environment. ``publish`` replaces
    publishing Celery tasks (``publish(stream, ids)``), and ``transport`` replaces the transport
    built from ``settings.transport_url``; both exist for embedding and tests. ``clock`` gives
    the current aware UTC time.

    Every method an application calls raises ``DatabaseUnavailable`` or ``DatabaseNotMigrated``
    for a database that cannot do the work, never SQLAlchemy's exceptions; the worker's own
    methods (``deliver``, ``drain``, ...) leave theirs to the task that runs them.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        publish: Publish | None = None,
        transport: Transport | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.clock = clock
        self._engines = EngineCache(self.settings.database_url)
        self._publish_override = publish
        self._background = BackgroundPublisher(
            self._publish,
            max_batch=self.settings.batch_size,
            min_interval=self.settings.publish_interval_seconds,
        )
        self._fixed_transport = transport
        self._registry: TransportRegistry | None = None
        self._limiter: tuple[int, Limiter] | None = None
        self._celery: Celery | None = None
        self._deliveries = DeliveryPublisher(lambda: self.celery)
        self._dkim_signer: DkimSigner | None = None
        self._renderer: TemplateRenderer | None = None
        self._limits = Limits(
            max_message_bytes=self.settings.max_message_bytes,
            max_recipients=self.settings.max_recipients,
            max_attachment_bytes=self.settings.max_attachment_bytes,
        )
        self.attachment_store = AttachmentStore(self.settings.attachment_dir)

    # producer side ------------------------------------------------------------------------

    def send(
        self,
        to: str | Sequence[str] | None = None,
        subject: str | None = None,
        *,
        from_: str | None = None,
        text: str | None = None,
        html: str | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        reply_to: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        send_at: datetime | None = None,
        stream: str = Stream.TRANSACTIONAL,
        attachments: Sequence[Attachment | Mapping[str, Any] | os.PathLike[str]] | None = None,
        template: str | None = None,
        context: Mapping[str, Any] | None = None,
        locale: str | None = None,
        transport: str | None = None,
        session: Session | None = None,
    ) -> Message:
        """Validate and store a message, then publish its delivery task after the commit.

        Returns once the row is committed (or, with ``session``, once it is added to that
        transaction: the task is published when the caller commits, and never on rollback).
        Raises a ``MessageRejected`` subclass, before storing anything, for invalid input.
        With an ``idempotency_key`` already used, returns the message stored under it.
        Raises ``DatabaseUnavailable`` when the database cannot take the message (retry, with the
        same ``idempotency_key`` to store it once) and ``DatabaseNotMigrated`` when it lacks the
        tables; with ``session``, database errors are the caller's own and are not translated.

        Give the content either as ``subject`` with ``text`` and/or ``html`` (a text part is
        derived from HTML when missing), or as ``template`` with ``context`` and ``locale``:
        the newest version of the template (with locale fallback) is rendered now, so a
        template error surfaces here as ``TemplateError``. ``attachments`` are ``Attachment``
        objects, paths, or mappings of ``Attachment`` fields. ``transport`` names a configured
        transport to use instead of the routes (``UnknownTransport`` if there is none).
        """
        content = Content(subject=subject, text=text, html=html)
        fields: dict[str, Any] = {
            "from_": from_ or self.settings.default_from,
            "to": to,
            "cc": cc,
            "bcc": bcc,
            "reply_to": reply_to,
            "headers": headers,
            "tags": tags,
            "metadata": metadata,
            "stream": stream,
            "send_at": send_at,
            "idempotency_key": idempotency_key,
            "attachments": attachments,
            "transport": None if transport is None else self.registry.check(transport),
            "limits": self._limits,
        }
        if session is not None:
            draft = self._draft(session, content, template, context, locale, fields)
            return self._add(session, draft)
        with database_errors():
            if template is None and not attachments and self._engines.dialect == "postgresql":
                draft = self._draft(None, content, template, context, locale, fields)
                return self._insert_alone(draft)
            with self._sessions_for_one_insert(attachments)() as own:
                draft = self._draft(own, content, template, context, locale, fields)
                message = self._add(own, draft)
                own.commit()
            return message

    def _sessions_for_one_insert(self, attachments: object) -> sessionmaker[Session]:
        # On PostgreSQL a message without attachments is one INSERT (its event rides in the
        # same statement), which is atomic on its own: no transaction round trips needed.
        if not attachments and self._engines.dialect == "postgresql":
            return self._engines.autocommit_sessions
        return self.sessions

    def _insert_alone(self, draft: Draft) -> Message:
        # The common send(): one autocommit INSERT, without an ORM session or a transaction.
        engine = self._engines.engine
        driver_errors = engine.dialect.loaded_dbapi.Error
        try:
            pooled = engine.raw_connection()
        except driver_errors as error:  # refused: raw_connection() leaves the driver's error bare
            raise _wrapped(engine, error, disconnected=False) from error
        driver: Any = pooled.dbapi_connection
        try:
            driver.autocommit = True  # a local switch: the connection is idle
            try:
                message = messages.insert_alone(driver, engine.dialect, draft, now=self.clock())
            finally:
                driver.autocommit = False
        except driver_errors as error:
            # as SQLAlchemy would: a lost connection leaves the pool, and the error is wrapped
            disconnected = engine.dialect.is_disconnect(error, driver, None)
            if disconnected:
                pooled.invalidate(error)
            raise _wrapped(engine, error, disconnected=disconnected) from error
        finally:
            pooled.close()
        if message is None:  # the idempotency key was used already
            with self.sessions() as session:
                existing = messages.find_by_idempotency_key(session, draft.idempotency_key or "")
            if existing is None:  # deleted in between: nothing to return, nothing was stored
                raise RuntimeError("idempotency key conflict without a stored message")
            return existing
        if message.status == MessageStatus.QUEUED:
            publish_or_leave_to_sweep(self._submit, message.stream, [message.id])
        return message

    def _draft(
        self,
        session: Session | None,
        content: Content,
        template: str | None,
        context: Mapping[str, Any] | None,
        locale: str | None,
        fields: dict[str, Any],
    ) -> Draft:
        if template is None:
            for name, value in (("context", context), ("locale", locale)):
                if value is not None:
                    raise MessageRejected(f"{name} is only used with a template", field=name)
            text = content.text
            if content.html and not text:
                # every HTML email should carry a readable text alternative
                text = html_to_text(content.html)
            return build_draft(subject=content.subject, text=text, html=content.html, **fields)
        if content != Content():
            raise MessageRejected(
                "give a template or subject/text/html, not both", field="template"
            )
        if session is None:
            raise TypeError("a template is read in a session")
        stored = self._template(session, template, locale)
        # rendered at enqueue: errors reach the caller, and the stored content is what was sent
        rendered = self.renderer.render(stored, context or {})
        return build_draft(
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            template_name=stored.name,
            template_locale=stored.locale,
            template_version=stored.version,
            **fields,
        )

    def _template(self, session: Session, name: str, locale: str | None) -> Template:
        from postroom import templates  # see "templates" below

        try:
            return templates.get_template(session, name, locale=locale)
        except TemplateNotFound as missing:
            raise TemplateError(str(missing), field="template", template=name) from None

    async def asend(self, *args: Any, **kwargs: Any) -> Message:
        """``send`` for async code; the database work runs in a worker thread."""
        if kwargs.get("session") is not None:
            raise TypeError("asend() does not join a session; use send(..., session=...)")
        return await asyncio.to_thread(functools.partial(self.send, *args, **kwargs))

    def send_batch(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        stream: str = Stream.BULK,
        session: Session | None = None,
        keep_ids: bool | None = None,
        chunk_size: int = batches.CHUNK_SIZE,
    ) -> batches.BatchResult:
        """Validate and store many messages a chunk at a time; publish each chunk after its commit.

        Each item of ``messages`` is a mapping of ``send()``'s keyword arguments (``to``,
        ``subject``, ``html``, ``template``, ``context``, ``idempotency_key``, ...); ``stream``
        and ``session`` apply to the whole batch. ``messages`` is read lazily, ``chunk_size``
        items at a time, so a generator of any length is stored in constant memory. Each chunk
        is one INSERT and, without ``session``, one transaction, committed (and its tasks
        published) before the next chunk is read.

        Returns a ``BatchResult``: ``created`` new messages; ``duplicates``, the items whose
        ``idempotency_key`` was used before (in the database or earlier in this batch), which
        store nothing; and ``ids``, in input order the id of the message stored for each item.
        ``ids`` are kept for a sequence (list, tuple) and, to keep memory flat, not for other
        iterables; ``keep_ids`` overrides that.

        The first invalid item raises ``BatchItemRejected``, a ``MessageRejected`` whose field
        names it (``messages[3].to[0]``): every item before it is stored (committed and
        published; ``error.result`` counts them) and nothing from it on, so ``error.index`` is
        where to resume. With ``session``, the rows join the caller's transaction instead: the
        tasks are published when the caller commits and never on rollback, so rolling back
        after an error stores nothing at all.

        Without ``session``, a database outage raises ``BatchInterrupted`` (a
        ``DatabaseUnavailable``): ``error.result`` counts the stored items before
        ``error.index``, and resuming from there with the same idempotency keys stores each
        message once.
        """
        sender = batches.BatchSender(
            prepare=functools.partial(self._batch_draft, stream=batches.check_stream(stream)),
            publish=self._submit,
            attachment_store=self.attachment_store,
            clock=self.clock,
            sessions=self.sessions,
            session=session,
            chunk_size=chunk_size,
        )
        keep = isinstance(messages, Sequence) if keep_ids is None else keep_ids
        return sender.send(messages, keep_ids=keep)

    def _batch_draft(self, session: Session, item: Mapping[str, Any], *, stream: str) -> Draft:
        # the same validation and rendering as send(), field for field
        transport = item.get("transport")
        fields: dict[str, Any] = {
            "from_": item.get("from_") or self.settings.default_from,
            **{name: item.get(name) for name in batches.PLAIN_FIELDS},
            "stream": stream,
            "transport": None if transport is None else self.registry.check(transport),
            "limits": self._limits,
        }
        content = Content(subject=item.get("subject"), text=item.get("text"), html=item.get("html"))
        template, context, locale = item.get("template"), item.get("context"), item.get("locale")
        return self._draft(session, content, template, context, locale, fields)

    async def asend_batch(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        stream: str = Stream.BULK,
        keep_ids: bool | None = None,
        chunk_size: int = batches.CHUNK_SIZE,
    ) -> batches.BatchResult:
        """``send_batch`` (without a session) for async code; runs in a worker thread.

        ``messages`` is read in that thread too: give a list, or an iterable that does no
        async I/O.
        """
        call = functools.partial(
            self.send_batch, messages, stream=stream, keep_ids=keep_ids, chunk_size=chunk_size
        )
        return await asyncio.to_thread(call)

    def _add(self, session: Session, draft: Draft) -> Message:
        message, created = messages.create(
            session, draft, attachment_store=self.attachment_store, now=self.clock()
        )
        if created and message.status == MessageStatus.QUEUED:
            publish_after_commit(session, message.stream, [message.id], self._submit)
        return message

    @translates_database_errors
    def get_message(self, message_id: str) -> Message:
        """The message with ``message_id``; ``MessageNotFound`` if there is none."""
        with self.sessions() as session:
            return messages.get(session, message_id)

    @translates_database_errors
    def get_events(self, message_id: str) -> list[MessageEvent]:
        """The message's status transitions, oldest first."""
        with self.sessions() as session:
            messages.get(session, message_id)
            return list_events(session, message_id)

    @translates_database_errors
    def list_attachments(self, message_id: str) -> list[StoredAttachment]:
        """The message's attachments in order, without their content."""
        with self.sessions() as session:
            return list_attachments(session, message_id)

    @translates_database_errors
    def list_messages(
        self, *, status: MessageStatus | None = None, before: str | None = None, limit: int = 50
    ) -> list[Message]:
        """A page of messages, newest first."""
        with self.sessions() as session:
            return messages.list_messages(session, status=status, before=before, limit=limit)

    @translates_database_errors
    def cancel(self, message_id: str) -> Message:
        """Cancel a message not yet being sent; ``InvalidTransition`` otherwise."""
        with self.sessions.begin() as session:
            return messages.cancel(session, message_id, now=self.clock())

    # templates ------------------------------------------------------------------------------
    # postroom.templates is imported by the methods that use it: its Jinja sandbox and
    # css-inline would add ~4 MiB to every worker process, which only sends content that was
    # rendered at enqueue.

    @translates_database_errors
    def save_template(
        self,
        name: str,
        *,
        subject: str,
        text: str | None = None,
        html: str | None = None,
        locale: str = "",
    ) -> Template:
        """Store a new version of a template (or return the latest if nothing changed)."""
        from postroom import templates

        with self.sessions.begin() as session:
            return templates.save_template(
                session, name, subject=subject, text=text, html=html, locale=locale
            )

    @translates_database_errors
    def get_template(
        self, name: str, *, locale: str | None = None, version: int | None = None
    ) -> Template:
        """A template version (the newest by default), with locale fallback."""
        from postroom import templates

        with self.sessions() as session:
            return templates.get_template(session, name, locale=locale, version=version)

    @translates_database_errors
    def list_templates(self) -> list[Template]:
        """The newest version of every template and locale."""
        from postroom import templates

        with self.sessions() as session:
            return templates.list_templates(session)

    @translates_database_errors
    def list_template_versions(self, name: str, *, locale: str = "") -> list[Template]:
        """Every version of one template variant, oldest first."""
        from postroom import templates

        with self.sessions() as session:
            return templates.list_versions(session, name, locale)

    @translates_database_errors
    def sync_templates(self, directory: os.PathLike[str]) -> list[Template]:
        """Load a folder of template files; return those that got a new version."""
        from postroom import templates

        with self.sessions.begin() as session:
            return templates.sync_folder(session, Path(directory))

    @translates_database_errors
    def render_template(
        self,
        name: str,
        context: Mapping[str, Any],
        *,
        locale: str | None = None,
        version: int | None = None,
    ) -> tuple[Template, Rendered]:
        """Render a template without sending anything (a preview)."""
        template = self.get_template(name, locale=locale, version=version)
        return template, self.renderer.render(template, context)

    # worker side ----------------------------------------------------------------------------

    def deliver(self, ids: Sequence[str], *, stream: str | None = None) -> DeliveryReport:
        """Claim, send and record due messages (the body of the Celery task).

        The messages among ``ids`` come first; with ``stream``, the batch is topped up to
        ``batch_size`` with other due messages of that stream.
        """
        return self._deliverer().deliver(ids, stream=stream)

    def drain(self, ids: Sequence[str], *, stream: str, budget_seconds: float) -> DeliveryReport:
        """Deliver like :meth:`deliver`, then go on claiming full batches of ``stream``.

        It goes on while every batch was full and sent in full, for at most ``budget_seconds``
        of its own time: a batch that falls short means the stream is drained, and one with a
        deferral or a failure means a limit, a push-back or a failing server that more claims
        would only run into again. The report sums every batch.
        """
        deliverer = self._deliverer()
        deadline = time.monotonic() + budget_seconds
        report = batch = deliverer.deliver(ids, stream=stream)
        while (
            batch.claimed == deliverer.batch_size
            and batch.sent == batch.claimed
            and time.monotonic() < deadline
        ):
            batch = deliverer.deliver([], stream=stream)
            report += batch
        return report

    def dispatch_due(self) -> int:
        """Publish every due message without a live task; return how many were published."""
        now = self.clock()
        with self.sessions.begin() as session:
            claims.promote_scheduled(session, now=now)
            due = claims.mark_dispatchable(
                session,
                now=now,
                redispatch_after=timedelta(seconds=self.settings.redispatch_after_seconds),
                limit=self.settings.dispatch_limit,
            )
        by_stream: dict[str, list[str]] = {}
        for message in due:
            by_stream.setdefault(message.stream, []).append(message.id)
        size = self.settings.batch_size
        for stream, ids in by_stream.items():
            for start in range(0, len(ids), size):
                self._publish(stream, ids[start : start + size])
        return len(due)

    def recover_expired(self) -> int:
        """Retake messages whose worker died mid-send; return how many."""
        with self.sessions.begin() as session:
            return claims.recover_expired(
                session, now=self.clock(), max_attempts=self.settings.retry.max_attempts
            )

    # resources ------------------------------------------------------------------------------

    def _deliverer(self) -> Deliverer:
        return Deliverer(
            sessions=self.sessions,
            registry=self.registry,
            limiter=self.limiter,
            policy=self.settings.retry,
            lease=timedelta(seconds=self.settings.lease_seconds),
            clock=self.clock,
            attachments=self.attachment_store,
            sign=self._dkim_sign(),
            batch_size=self.settings.batch_size,
        )

    def _dkim_sign(self) -> Sign | None:
        if not self.settings.dkim:
            return None
        if self._dkim_signer is None:
            # keys are loaded (and checked) once, on first delivery
            self._dkim_signer = DkimSigner.from_keys(self.settings.dkim)
        signer = self._dkim_signer
        return lambda data, domain: signer.sign(data, sender_domain=domain)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory on this process's engine."""
        return self._engines.sessions

    @property
    def registry(self) -> TransportRegistry:
        """The configured transports: routing, failover, and a connection pool per process."""
        if self._registry is None:
            fixed = self._fixed_transport
            config = RegistryConfig.from_settings(self.settings)
            if fixed is None:
                self._registry = TransportRegistry(config)
            else:
                self._registry = TransportRegistry(config, create=lambda _url: fixed)
        return self._registry

    @property
    def limiter(self) -> Limiter:
        """This process's view of the global limits (shared through Redis when configured)."""
        pid = os.getpid()
        if self._limiter is None or self._limiter[0] != pid:
            # Without configured limits there is nothing to share, and a Redis round trip per
            # batch would buy nothing: provider push-back then pauses this process only.
            shared = self.settings.limits or self.settings.limits_redis_url
            redis_url = redis_url_for_limits(self.settings) if shared else None
            self._limiter = (pid, limiter_for(self.settings, redis_url))
        return self._limiter[1]

    @property
    def renderer(self) -> TemplateRenderer:
        """The sandboxed renderer, with its cache of compiled templates."""
        if self._renderer is None:
            from postroom.templates import TemplateRenderer  # see "templates" above

            self._renderer = TemplateRenderer(
                max_output_chars=self.settings.template_max_output_chars,
                max_seconds=self.settings.template_max_seconds,
            )
        return self._renderer

    @property
    def celery(self) -> Celery:
        """The Celery app whose tasks deliver through this client."""
        if self._celery is None:
            self._celery = create_celery(self)
        return self._celery

    def _submit(self, stream: str, ids: list[str]) -> None:
        # The broker round trip happens on a background thread, off the caller's latency, after
        # its one-time set-up here (``DeliveryPublisher.prepare``); a replaced ``publish``
        # (tests, embedding) is called directly, so it sees every id at once.
        if self._publish_override is not None:
            self._publish_override(stream, ids)
        else:
            self._deliveries.prepare()
            self._background.submit(stream, ids)

    def flush_publications(self, timeout: float = 5.0) -> bool:
        """Wait until every id sent so far was handed to the broker; False on timeout."""
        return self._background.flush(timeout)

    def _publish(self, stream: str, ids: list[str]) -> None:
        if self._publish_override is not None:
            self._publish_override(stream, ids)
        else:
            self._deliveries.publish(stream, ids)

    def close(self) -> None:
        """Publish what is pending, then close this process's database and transport connections."""
        self._background.close()
        self._deliveries.close()
        if self._registry is not None:
            self._registry.close()
        self._engines.dispose()


def _wrapped(engine: Engine, error: Exception, *, disconnected: bool) -> StatementError:
    """The driver's ``error`` as SQLAlchemy wraps one, without the statement's parameters."""
    return DBAPIError.instance(
        None,
        None,
        error,
        engine.dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=disconnected,
        dialect=engine.dialect,
    )

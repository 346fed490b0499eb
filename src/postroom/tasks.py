"""The Celery app: queues, safe broker settings, beat schedule, and thin tasks carrying ids."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu import Connection, Exchange, Producer, Queue
from kombu.utils.uuid import uuid

from postroom.drafts import Stream

if TYPE_CHECKING:
    from postroom.client import Postroom

TRANSACTIONAL_QUEUE = "postroom.transactional"
BULK_QUEUE = "postroom.bulk"
MAINTENANCE_QUEUE = "postroom.maintenance"
# Listed in the order a worker drains them. The sweeps come first: they take milliseconds, and
# behind a transactional backlog retries and lost tasks would wait for the backlog to clear.
# Transactional comes before bulk, so bulk never delays it.
QUEUES = (MAINTENANCE_QUEUE, TRANSACTIONAL_QUEUE, BULK_QUEUE)

logger = logging.getLogger(__name__)

DELIVER_TASK = "postroom.deliver"
DISPATCH_DUE_TASK = "postroom.dispatch_due"
RECOVER_EXPIRED_TASK = "postroom.recover_expired"


def queue_for(stream: str) -> str:
    """The queue a message of ``stream`` travels on."""
    return BULK_QUEUE if stream == Stream.BULK else TRANSACTIONAL_QUEUE


def create_celery(client: Postroom) -> Celery:
    """A Celery app whose tasks deliver through ``client``."""
    settings = client.settings
    timeout = settings.broker_timeout_seconds
    app = Celery("postroom", broker=settings.resolved_broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name, Exchange("postroom"), routing_key=name) for name in QUEUES],
        task_default_queue=TRANSACTIONAL_QUEUE,
        task_default_exchange="postroom",
        task_default_routing_key=TRANSACTIONAL_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # A task is acknowledged only after it ran, and re-queued if its process is killed;
        # the claim makes the re-run harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # The outbox is the record of what happened; result rows would only pile up.
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=timeout,
        broker_transport_options={
            "queue_order_strategy": "priority",
            "visibility_timeout": 3600,
            # Without these, publishing to a broker that accepts and never answers hangs.
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        },
        # send() must not block a web request for long when the broker is down: the row is
        # committed and the dispatch sweep publishes it later.
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        beat_schedule={
            DISPATCH_DUE_TASK: {
                "task": DISPATCH_DUE_TASK,
                "schedule": settings.dispatch_interval_seconds,
                "options": {
                    "queue": MAINTENANCE_QUEUE,
                    "expires": settings.dispatch_interval_seconds * 5,
                },
            },
            RECOVER_EXPIRED_TASK: {
                "task": RECOVER_EXPIRED_TASK,
                "schedule": settings.recover_interval_seconds,
                "options": {
                    "queue": MAINTENANCE_QUEUE,
                    "expires": settings.recover_interval_seconds * 5,
                },
            },
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
    )

    # shared=False: each app (one per client) must call its own client, not the first one made
    @app.task(name=DELIVER_TASK, shared=False)
    def deliver(ids: list[str], stream: str | None = None) -> None:
        if stream == Stream.TRANSACTIONAL:
            client.drain(ids, stream=stream, budget_seconds=settings.transactional_drain_seconds)
        else:
            client.deliver(ids, stream=stream)

    @app.task(name=DISPATCH_DUE_TASK, shared=False)
    def dispatch_due() -> None:
        client.dispatch_due()

    @app.task(name=RECOVER_EXPIRED_TASK, shared=False)
    def recover_expired() -> None:
        client.recover_expired()

    return app


class DeliveryPublisher:
    """Publishes ``deliver(ids, stream)`` tasks straight to their stream's queue.

    ``send_task`` would route through the ``postroom`` exchange (on Redis, a binding lookup
    per message), fire publish signals and render the arguments for monitoring; a task that
    carries ids needs none of it. The message is the one ``send_task`` would publish, so any
    worker consumes it. This runs in the producer's process beside its sends, each publish
    holding the interpreter while a send waits for it: so one connection and producer are kept
    instead of being taken from Celery's pool and wrapped in kombu's retry machinery per task
    (that made up about half of a publish's CPU: about 330 µs against 180 µs here). A publish that
    fails on a broken connection is retried once on a fresh one, as Celery's publish retry
    policy here would; a second failure is raised.
    """

    def __init__(self, app: Callable[[], Celery]) -> None:
        # called at the first publish: a client that never publishes needs no Celery app
        self._get_app = app
        self._app: Celery | None = None
        self._lock = threading.Lock()  # the sweep may publish beside the background thread
        self._pid = 0
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._prepared = False

    def prepare(self) -> None:
        """Do a first publish's one-time work now, in the calling thread; never raises.

        That work is mostly CPU: building the Celery app and importing the broker's client
        library (redis-py: about 70 ms). Left to the first publish, it ran on the publishing
        thread while the application went on sending, and the next hundred or so ``send()``
        calls each waited for the interpreter, at 2 to 6 ms apiece. It opens no connection: a
        broker that is down cannot block the caller. An error here is left to the publish,
        which logs it and leaves the ids to the sweep.
        """
        if self._prepared:
            return
        with self._lock:
            self._prepared = True
            try:
                app = self._app = self._app or self._get_app()
                connection = app.connection_for_write()
                try:
                    connection.transport  # noqa: B018 (imports and builds the transport)
                finally:
                    connection.release()
            except Exception:
                logger.debug("preparing to publish failed; the publish will say why", exc_info=True)

    def publish(self, stream: str, ids: list[str]) -> None:
        """Publish one task carrying ``ids``; raises if the broker cannot be reached."""
        app = self._app = self._app or self._get_app()
        queue = app.amqp.queues[queue_for(stream)]
        message = app.amqp.as_task_v2(
            uuid(),
            DELIVER_TASK,
            args=(ids, stream),
            argsrepr=f"[<{len(ids)} ids>, {stream!r}]",
            kwargsrepr="{}",
        )
        with self._lock:
            try:
                self._publish(self._producer_for(app), queue, message)
            except self._recoverable_errors():
                self._release()
                self._publish(self._producer_for(app), queue, message)

    def close(self) -> None:
        """Release the broker connection; the next publish opens a new one."""
        with self._lock:
            self._release()

    @staticmethod
    def _publish(producer: Producer, queue: Queue, message: Any) -> None:
        producer.publish(
            message.body,
            exchange="",  # the default exchange: the routing key names the queue
            routing_key=queue.name,
            serializer="json",
            headers=message.headers,
            retry=False,
            **message.properties,
        )

    def _producer_for(self, app: Celery) -> Producer:
        # a forked child must not write on its parent's socket
        if self._producer is None or self._pid != os.getpid():
            connection = app.connection_for_write()
            try:
                channel = connection.channel()
                # declared once per connection: kombu's per-publish declare check binds a copy
                # of the queue each time, a fifth of the publish
                for stream in Stream:
                    app.amqp.queues[queue_for(stream)].bind(channel).declare()
            except BaseException:
                connection.release()
                raise
            self._connection, self._pid = connection, os.getpid()
            self._producer = app.amqp.Producer(channel, auto_declare=False)
        return self._producer

    def _recoverable_errors(self) -> tuple[type[BaseException], ...]:
        connection = self._connection
        if connection is None:
            return ()
        return connection.connection_errors + connection.channel_errors

    def _release(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None and self._pid == os.getpid():
            try:
                connection.release()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                logger.debug("closing a broker connection failed", exc_info=True)

"""The Celery app: queues, safe broker settings, beat schedule, and thin tasks carrying ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery
from kombu import Exchange, Queue
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
        client.deliver(ids, stream=stream)

    @app.task(name=DISPATCH_DUE_TASK, shared=False)
    def dispatch_due() -> None:
        client.dispatch_due()

    @app.task(name=RECOVER_EXPIRED_TASK, shared=False)
    def recover_expired() -> None:
        client.recover_expired()

    return app


def publish_deliver(app: Celery, stream: str, ids: list[str]) -> None:
    """Publish one ``deliver(ids, stream)`` task straight to its stream's queue.

    ``send_task`` would route through the ``postroom`` exchange (on Redis, a binding lookup
    per message), fire publish signals and render the arguments for monitoring; a task that
    carries ids needs none of it, and its publisher shares the process with the caller.
    The message is the one ``send_task`` would publish, so any worker consumes it.
    """
    queue = app.amqp.queues[queue_for(stream)]
    task_id = uuid()
    message = app.amqp.as_task_v2(
        task_id,
        DELIVER_TASK,
        args=(ids, stream),
        argsrepr=f"[<{len(ids)} ids>, {stream!r}]",
        kwargsrepr="{}",
    )
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange="",  # the default exchange: the routing key names the queue
            routing_key=queue.name,
            declare=[queue],
            serializer="json",
            headers=message.headers,
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
            **message.properties,
        )

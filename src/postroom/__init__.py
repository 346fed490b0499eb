"""postroom: durable background email for Python web apps, on Celery.

``postroom.send(...)`` stores a message in the outbox and publishes its delivery task after the
commit; Celery workers deliver it. The module-level functions use a default ``Postroom`` client
built from the environment on first use; ``configure()`` replaces it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from postroom.batches import BatchInterrupted, BatchItemRejected, BatchResult
from postroom.client import Postroom
from postroom.errors import (
    ConfigurationError,
    DatabaseNotMigrated,
    DatabaseUnavailable,
    DeliveryError,
    HeaderInjection,
    InvalidAddress,
    InvalidTransition,
    MessageNotFound,
    MessageRejected,
    MessageTooLarge,
    PermanentFailure,
    PostroomError,
    TemplateError,
    TemporaryFailure,
)
from postroom.messages import Message, MessageStatus
from postroom.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

_default_client: Postroom | None = None
_default_lock = threading.Lock()


def configure(settings: Settings | None = None) -> Postroom:
    """Replace the default client with one built from ``settings``, and return it."""
    global _default_client
    with _default_lock:
        if _default_client is not None:
            _default_client.close()
        _default_client = Postroom(settings)
        return _default_client


def default_client() -> Postroom:
    """The client behind the module-level functions, built from the environment on first use."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Postroom()
        return _default_client


def _on_default_client(method: Callable[Concatenate[Postroom, P], R]) -> Callable[P, R]:
    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return method(default_client(), *args, **kwargs)

    return call


send = _on_default_client(Postroom.send)
asend = _on_default_client(Postroom.asend)
send_batch = _on_default_client(Postroom.send_batch)
asend_batch = _on_default_client(Postroom.asend_batch)
get_message = _on_default_client(Postroom.get_message)
cancel = _on_default_client(Postroom.cancel)

__all__ = [
    "BatchInterrupted",
    "BatchItemRejected",
    "BatchResult",
    "ConfigurationError",
    "DatabaseNotMigrated",
    "DatabaseUnavailable",
    "DeliveryError",
    "HeaderInjection",
    "InvalidAddress",
    "InvalidTransition",
    "Message",
    "MessageNotFound",
    "MessageRejected",
    "MessageStatus",
    "MessageTooLarge",
    "PermanentFailure",
    "Postroom",
    "PostroomError",
    "Settings",
    "TemplateError",
    "TemporaryFailure",
    "asend",
    "asend_batch",
    "cancel",
    "configure",
    "default_client",
    "get_message",
    "send",
    "send_batch",
]

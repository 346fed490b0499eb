"""The seeds' web side: a FastAPI route that queues the email task and answers at once.

Reproduces seed 001:54-57 and 84-91 (``uvicorn main:app``; ``task_id =
send_welcome_email_async(...)`` "returns immediately, email sent in background") and 004:142-159
(the view calls ``.delay()`` and answers 201 with a message). A plain ``def`` route, so
FastAPI runs the blocking ``.delay()`` in its thread pool rather than on the event loop.
It lives apart from ``seeds_app`` so that the Celery workers do not import FastAPI.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from bench.seeds_app import send_email

api = FastAPI()


class EmailIn(BaseModel):
    """What the route needs to queue one email."""

    to: str
    subject: str
    html: str


@api.post("/v1/messages", status_code=202)
def queue_email(body: EmailIn) -> dict[str, str]:
    """Queue the email task; answer with its id."""
    result = send_email.delay(body.to, body.subject, body.html)
    return {"task_id": result.id}

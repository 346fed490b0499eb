"""The seeds' pattern, reproduced: one Celery task per email, a new SMTP connection per email.

What each part reproduces, by seed file (in /work/shared/seeds/) and line:

- 004:164-210 ``@shared_task def send_welcome_email(...)``: an HTML body from an f-string, a
  text body, ``EmailMultiAlternatives(subject, body=text, from_email, to=[...])``,
  ``attach_alternative(html, "text/html")``, ``email.send()``; logs and re-raises on error.
  004:151 (and 002:122, 003:100) the caller queues it with ``.delay(...)`` and returns at once.
- 004:11-13 and 002:22-25: Redis as the broker *and* the result backend (every task's return
  value is stored), JSON serialization; 000:53, 001:41, 004:105 ``redis://localhost:6379/0``.
- 002:315-322 (same in 000:199-201, 000:360): ``bind=True, max_retries=3,
  default_retry_delay=60`` and ``raise self.retry(exc=exc)``.
- 003:126-127: ``EmailMessage``, ``get_connection`` and ``strip_tags`` live in the tasks: the
  text part is the HTML with its tags stripped, built in the worker.
- 000:85, 002:57, 003:244, 004:116: ``celery -A app worker --loglevel=info`` and nothing
  else, so Celery's defaults hold: prefork with one child per CPU (2 here), early
  acknowledgement, prefetch multiplier 4, gossip, mingle and heartbeats on, one queue.
- 000:349-356: more capacity is more ``celery worker`` processes on the same queue.
- 002:359-365: a per-task ``rate_limit`` (the rate-limit row sets ``10/s`` through
  ``BENCH_SEEDS_RATE_LIMIT``).

Django is not installed, so its parts are reproduced with the standard library, as they behave:
``email.send()`` through Django's SMTP backend opens a connection (``smtplib.SMTP`` with a
local host name looked up once per process), sends the message as bytes and quits, for every
email. ``EmailMultiAlternatives`` becomes ``email.message.EmailMessage`` with a text part and
an HTML alternative, plus the ``Date`` and ``Message-ID`` headers Django adds.

One deliberate difference: the seeds pass a database id and the task loads the row
(``User.objects.get(id=user_id)``); here the task receives address, subject and HTML, as the
issue asks (``send_email.delay(to, subject, html)``). The seeds' figures therefore include no
database query, which favours them.

Configured by environment variables, as the seeds are (``.env``): ``BENCH_SEEDS_BROKER_URL``,
``BENCH_SEEDS_SMTP_HOST``, ``BENCH_SEEDS_SMTP_PORT`` and ``BENCH_SEEDS_RATE_LIMIT``.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import cache
from html.parser import HTMLParser
from typing import Any

from celery import Celery

from bench.content import SENDER

BROKER_URL = os.environ.get("BENCH_SEEDS_BROKER_URL", "redis://localhost:6379/0")
SMTP_HOST = os.environ.get("BENCH_SEEDS_SMTP_HOST", "127.0.0.1")
SMTP_PORT = int(os.environ.get("BENCH_SEEDS_SMTP_PORT", "25"))
RATE_LIMIT = os.environ.get("BENCH_SEEDS_RATE_LIMIT") or None

logger = logging.getLogger(__name__)

app = Celery("seeds", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])


class _TextCollector(HTMLParser):
    """Keeps the text between tags, as Django's ``strip_tags`` parser does."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_tags(html: str) -> str:
    """The text of ``html`` without its tags, stripped again until nothing changes."""
    while "<" in html and ">" in html:
        collector = _TextCollector()
        collector.feed(html)
        collector.close()
        text = "".join(collector.parts)
        if text == html:
            break
        html = text
    return html


@cache
def local_hostname() -> str:
    """The name sent in EHLO and Message-ID, looked up once (Django's ``DNS_NAME``)."""
    return socket.getfqdn()


def build_message(to: str, subject: str, html: str) -> EmailMessage:
    """What ``EmailMultiAlternatives(...).attach_alternative(html, "text/html")`` produces."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = SENDER
    message["To"] = to
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=local_hostname())
    message.set_content(strip_tags(html))
    message.add_alternative(html, subtype="html")
    return message


def send_over_new_connection(message: EmailMessage, to: str) -> None:
    """Django's ``email.send()``: open a connection, send, quit; nothing is kept."""
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, local_hostname=local_hostname()) as connection:
        # Django sends ``as_bytes(linesep="\r\n")``: the same bytes, through the policy here
        wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        connection.sendmail(SENDER, [to], wire)


@app.task(bind=True, max_retries=3, default_retry_delay=60, rate_limit=RATE_LIMIT)
def send_email(self: Any, to: str, subject: str, html: str) -> str:
    """Build and send one email; retried up to 3 times, a minute apart, on any error."""
    try:
        send_over_new_connection(build_message(to, subject, html), to)
        return f"Email sent to {to}"
    except Exception as exc:
        logger.error(f"Error sending email: {exc!s}")  # an f-string, as the seeds log
        raise self.retry(exc=exc) from exc

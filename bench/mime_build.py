"""``python -m bench.mime_build``: µs per ``build_envelope`` of a 5 KB text+HTML message.

Times the direct writer (``postroom.mime_fast``) against the ``EmailMessage`` path it stands in
for, on the same messages: each has its own recipient and id, as in a batch, so the address
cache only helps with the sender. Two header sets: plain ASCII, and a Cyrillic subject with a
non-ASCII display name (RFC 2047 encoded words). Prints figures; asserts only that both paths
give the same bytes.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from unittest import mock

from postroom import mime_fast
from postroom.messages import Message
from postroom.mime import build_envelope

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
_PARAGRAPH = (
    "Your order has shipped and is on its way. You can follow the parcel on the carrier's site; "
    "it usually arrives within two working days. If anything is missing, reply to this email."
)
HEADERS = {
    "ascii": ("Example Shop <shop@example.com>", "Ann Smith", "Your order #{n} has shipped"),
    "non-ascii": ("Магазин <shop@example.com>", "Zoë Müller", "Ваш заказ №{n} отправлен 🚚"),
}


def make_message(n: int, kind: str) -> Message:
    """A message of about 5 KB: a text part of long paragraphs and its HTML twin."""
    sender, name, subject = HEADERS[kind]
    paragraphs = [f"{_PARAGRAPH} (item {i} of order {n})" for i in range(12)]
    return Message(
        id=f"01BENCH{n:019d}",
        from_addr=sender,
        to=[f"{name} <customer{n}@example.org>"],
        cc=[],
        bcc=[],
        reply_to=["support@example.com"],
        subject=subject.format(n=n),
        text="\n\n".join(paragraphs) + "\n",
        html="<html><body>\n" + "\n".join(f"<p>{p}</p>" for p in paragraphs) + "\n</body></html>",
        headers={"X-Campaign": "order-shipped"},
        message_id_header=f"<01BENCH{n:019d}@example.com>",
    )


def per_message_us(messages: list[Message], build: Callable[[Message], bytes]) -> float:
    """Best of three passes, in µs per message."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for message in messages:
            build(message)
        best = min(best, time.perf_counter() - start)
    return best / len(messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()

    def fast(message: Message) -> bytes:
        return build_envelope(message, now=NOW).data

    def slow(message: Message) -> bytes:
        with mock.patch.object(mime_fast, "build_bytes", return_value=None):
            return build_envelope(message, now=NOW).data

    for kind in HEADERS:
        messages = [make_message(n, kind) for n in range(args.messages)]
        for message in messages[:50]:
            state = random.getstate()
            fast_bytes = fast(message)
            random.setstate(state)  # the same boundary for the comparison
            assert fast_bytes == slow(message), message.id
        size = sum(len(fast(m)) for m in messages) / len(messages)
        slow_us = per_message_us(messages, slow)
        fast_us = per_message_us(messages, fast)
        print(
            f"{kind:>9}: {size:,.0f} bytes; EmailMessage {slow_us:,.0f} µs, "
            f"mime_fast {fast_us:,.0f} µs per message ({slow_us / fast_us:.1f}x)"
        )


if __name__ == "__main__":
    main()

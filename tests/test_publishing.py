from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from postroom.publishing import BackgroundPublisher, Publish


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.first = threading.Event()

    def __call__(self, stream: str, ids: list[str]) -> None:
        self.calls.append((stream, list(ids)))
        self.first.set()


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., BackgroundPublisher]]:
    """BackgroundPublisher factory; every publisher made is closed after the test."""
    made: list[BackgroundPublisher] = []

    def make(publish: Publish, **options: Any) -> BackgroundPublisher:
        made.append(BackgroundPublisher(publish, **options))
        return made[-1]

    yield make
    for publisher in made:
        publisher.close()


def test_an_isolated_submit_is_published_without_waiting_for_a_flush(make_publisher):
    recorder = Recorder()
    publisher = make_publisher(recorder, max_batch=100, min_interval=60.0)
    publisher.submit("transactional", ["a"])
    assert recorder.first.wait(10)
    assert recorder.calls == [("transactional", ["a"])]


def test_submits_within_the_interval_travel_together_and_flush_does_not_wait_it_out(make_publisher):
    recorder = Recorder()
    publisher = make_publisher(recorder, max_batch=100, min_interval=60.0)
    publisher.submit("transactional", ["first"])
    assert recorder.first.wait(10)
    for number in range(50):
        publisher.submit("transactional", [f"m{number}"])
    publisher.submit("bulk", ["b"])
    # the next publish is a minute away; flush publishes what is pending now
    assert publisher.flush(timeout=10)
    assert recorder.calls[0] == ("transactional", ["first"])
    assert sorted(recorder.calls[1:]) == [
        ("bulk", ["b"]),
        ("transactional", [f"m{number}" for number in range(50)]),
    ]


def test_batches_are_cut_at_max_batch(make_publisher):
    recorder = Recorder()
    publisher = make_publisher(recorder, max_batch=10, min_interval=60.0)
    publisher.submit("bulk", [f"m{number}" for number in range(25)])
    assert publisher.flush(timeout=10)
    assert [len(ids) for _, ids in recorder.calls] == [10, 10, 5]


def test_a_failing_publish_is_logged_and_later_ids_still_go(make_publisher, caplog):
    calls: list[list[str]] = []

    def publish(stream: str, ids: list[str]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    publisher = make_publisher(publish, max_batch=100)
    publisher.submit("transactional", ["lost-to-the-sweep"])
    assert publisher.flush(timeout=10)
    publisher.submit("transactional", ["next"])
    assert publisher.flush(timeout=10)
    assert calls == [["lost-to-the-sweep"], ["next"]]
    assert "the sweep will retry" in caplog.text

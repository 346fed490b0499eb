"""The measurements: each drives one system through one scenario and returns what it observed.

Every figure comes from a clock or a counter read during the run: the sink's own message
counter, its dump files' write times, /proc, Redis's command counter. Nothing is estimated.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from bench.content import recipient, welcome_html, welcome_text
from bench.services import Lab, Proc, SmtpSink, Usage, machine_busy_seconds, process_usage
from bench.systems import System, payload

POLL_SECONDS = 0.01


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``samples`` (seconds), in milliseconds."""
    if len(samples) < 2:
        return {"count": len(samples)}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "count": len(samples),
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "max_ms": max(samples) * 1000,
    }


def group_usage(procs: list[Proc]) -> Usage:
    """CPU and memory of the process groups of ``procs`` right now."""
    return process_usage([pid for proc in procs for pid in proc.members()])


def redis_commands(lab: Lab) -> int:
    return int(lab.redis().info("stats")["total_commands_processed"])


@dataclass
class Drain:
    """How the sink's counter moved while workers drained a backlog."""

    first_at: float
    first_count: int
    end_at: float
    end_count: int
    worker_cpu: float
    machine_cpu: float

    @property
    def rate(self) -> float:
        """Messages per second from the first delivered message to the last."""
        return (self.end_count - self.first_count) / (self.end_at - self.first_at)


def watch_drain(sink: SmtpSink, workers: list[Proc], expected: int, timeout: float) -> Drain:
    """Poll the sink's counter until ``expected`` messages arrived (or ``timeout``).

    The clock and the CPU counters start at the first delivered message, so worker start-up
    is left out of the rate for both systems alike.
    """
    deadline = time.monotonic() + timeout
    first: tuple[float, int, float, float] | None = None
    while True:
        count = sink.count()
        now = time.perf_counter()
        if first is None and count > 0:
            first = (now, count, group_usage(workers).cpu_seconds, machine_busy_seconds())
        if count >= expected or time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    if first is None:
        raise RuntimeError(f"no message reached the sink in {timeout}s")
    return Drain(
        first_at=first[0],
        first_count=first[1],
        end_at=now,
        end_count=count,
        worker_cpu=group_usage(workers).cpu_seconds - first[2],
        machine_cpu=machine_busy_seconds() - first[3],
    )


def timed_sends(system: System, messages: int, *, texts: list[str] | None = None) -> list[float]:
    """Send ``messages`` welcome emails one after another; each call's seconds.

    ``texts``: the plain-text part of each, rendered beforehand, where the application gives it.
    """
    latencies = []
    for number in range(messages):
        text = None if texts is None else texts[number]
        begin = time.perf_counter()
        system.send(recipient("user", number), text=text)
        latencies.append(time.perf_counter() - begin)
    return latencies


def end_to_end(lab: Lab, system: System, *, messages: int, concurrency: int) -> dict[str, Any]:
    """Enqueue ``messages`` with the workers stopped, then time one worker of ``concurrency``.

    The enqueue loop doubles as the producer-latency sample (``send()`` / ``.delay()`` with no
    worker running).
    """
    sink = lab.start_smtp_sink()
    system.prepare(sink)
    commands_before = redis_commands(lab)
    started = time.perf_counter()
    latencies = timed_sends(system, messages)
    enqueue_seconds = time.perf_counter() - started
    workers = system.start_workers(nodes=1, concurrency=concurrency)
    drain = watch_drain(sink, workers, messages, timeout=max(120.0, messages / 10))
    memory = group_usage(workers)
    for proc in workers:
        lab.stop(proc)
    commands = redis_commands(lab) - commands_before
    lab.stop(sink.proc)
    delivered = drain.end_count - drain.first_count
    return {
        "messages": messages,
        "concurrency": concurrency,
        "delivered": drain.end_count,
        "msgs_per_second": drain.rate,
        "drain_seconds": drain.end_at - drain.first_at,
        "worker_cpu_ms_per_msg": 1000 * drain.worker_cpu / delivered,
        "machine_cpu_ms_per_msg": 1000 * drain.machine_cpu / delivered,
        "redis_commands_per_msg": commands / messages,
        "worker_rss_mib": memory.rss_bytes / 2**20,
        "worker_pss_mib": memory.pss_bytes / 2**20,
        "worker_processes": memory.processes,
        "enqueue_per_second": messages / enqueue_seconds,
        "enqueue_latency": percentiles(latencies),
    }


def send_with_text(lab: Lab, system: System, *, messages: int) -> dict[str, Any]:
    """``send()`` latency when the application gives the text part too; no worker running.

    The end-to-end loop sends HTML alone, as the seeds do, so postroom derives the text part
    inside ``send()`` (the seeds' worker strips the tags instead); this is the same loop with
    the text rendered by the application beforehand, as from a .txt template.
    """
    sink = lab.start_smtp_sink()
    system.prepare(sink)
    texts = [welcome_text(recipient("user", number)) for number in range(messages)]
    latencies = timed_sends(system, messages, texts=texts)
    lab.stop(sink.proc)
    return {"messages": messages, "enqueue_latency": percentiles(latencies)}


def commit_floor(lab: Lab, *, messages: int) -> dict[str, Any]:
    """One durable INSERT per welcome email, through psycopg alone: the floor under ``send()``.

    Each is an autocommit INSERT of the email's HTML and text parts into a table with only a
    primary key, a prepared statement over loopback TCP as ``send()``'s, so it waits for the
    same commit (the WAL flushed to disk) and nothing of postroom runs. Whatever ``send()``
    adds on top is its validation, serialization and its fuller row.
    """
    import psycopg

    url = lab.create_database()
    addresses = [recipient("user", number) for number in range(messages)]
    rows = [(to, welcome_html(to), welcome_text(to)) for to in addresses]
    latencies = []
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE floor (id text PRIMARY KEY, html text, body text)")
        insert = "INSERT INTO floor (id, html, body) VALUES (%s, %s, %s)"
        for row in rows:
            begin = time.perf_counter()
            connection.execute(insert, row, prepare=True)
            latencies.append(time.perf_counter() - begin)
    return {"messages": messages, "enqueue_latency": percentiles(latencies)}


def api_load(lab: Lab, system: System, *, requests: int, clients: int) -> dict[str, Any]:
    """``POST /v1/messages`` from ``clients`` concurrent connections; no worker running."""
    sink = lab.start_smtp_sink()
    system.prepare(sink)
    proc, base_url, headers = system.start_api()
    try:
        figures = asyncio.run(_post_many(base_url, headers, requests=requests, clients=clients))
    finally:
        lab.stop(proc)
        lab.stop(sink.proc)
    return figures | {"requests": requests, "clients": clients}


async def _post_many(
    base_url: str, headers: dict[str, str], *, requests: int, clients: int
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    # One httpx client (one keep-alive connection) per simulated client: a single shared
    # pool of 50 connections costs the load generator milliseconds of CPU per request on
    # this 2-core machine, which would be measured as server latency.
    https = [
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) for _ in range(clients)
    ]

    async def client(http: httpx.AsyncClient, numbers: itertools.count[int], total: int) -> None:
        while (number := next(numbers)) < total:
            body = payload(recipient("api", number))
            begin = time.perf_counter()
            response = await http.post("/v1/messages", json=body)
            if number >= warmup:
                latencies.append(time.perf_counter() - begin)
                statuses[response.status_code] += 1

    # warm up, off the record: connections opened, routes and database pools primed
    warmup = clients * 2
    warm = itertools.count()
    await asyncio.gather(*(client(http, warm, warmup) for http in https))
    numbers = itertools.count(warmup)
    started = time.perf_counter()
    await asyncio.gather(*(client(http, numbers, warmup + requests) for http in https))
    wall = time.perf_counter() - started
    for http in https:
        await http.aclose()
    accepted = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "requests_per_second": len(latencies) / wall,
        "latency": percentiles(latencies),
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "accepted": accepted,
    }


def bulk_then_transactional(
    lab: Lab, system: System, *, bulk: int, transactional: int, interval: float
) -> dict[str, Any]:
    """Enqueue a bulk backlog (timed), start 2 worker processes, and while the backlog drains
    send one transactional message every ``interval`` seconds, ``transactional`` in all. Each
    one's latency is its ``send`` call to its arrival at the sink (dump file written), matched
    by recipient.

    The figure is the latency of transactional mail *behind a bulk backlog*; one sent after
    the backlog is gone would measure an idle system, so sending stops there and
    ``backlog_ran_out`` says so (the table then flags the row: raise ``--bulk``).
    """
    sink = lab.start_smtp_sink(dump=True)
    system.prepare(sink)
    addresses = [recipient("bulk", number) for number in range(bulk)]
    started = time.perf_counter()
    bulk_api = system.send_bulk(addresses)
    enqueue_seconds = time.perf_counter() - started
    workers = system.start_workers(nodes=1, concurrency=2)
    deadline = time.monotonic() + 60
    while sink.count() == 0 and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)  # the backlog is draining from here on
    sent_at: dict[str, float] = {}
    count_at_last_send = 0
    begin = time.monotonic()
    for number in range(transactional):
        time.sleep(max(0.0, begin + number * interval - time.monotonic()))
        # The sink's counter includes the transactional messages that arrived, so more than
        # ``bulk - count`` bulk messages are still to come: a lower bound, read from one log
        # line rather than a scan of the dump folder competing with the workers for the CPU.
        count = sink.count()
        if count >= bulk:
            break
        to = recipient("tx", number)
        sent_at[to] = time.time()  # wall clock: compared with the dump files' mtimes
        count_at_last_send = count
        system.send(to)
    arrived: dict[str, float] = {}
    deadline = time.monotonic() + max(120.0, bulk / 10)
    while len(arrived) < len(sent_at) and time.monotonic() < deadline:
        # arrival times are the dump files' mtimes: polling less often changes none of them
        time.sleep(0.25)
        arrived |= {to: at for to, at in sink.new_arrivals() if to in sent_at}
    for proc in workers:
        lab.stop(proc)
    lab.stop(sink.proc)
    latencies = [arrived[to] - sent_at[to] for to in arrived]
    last_send = max(sent_at.values(), default=0.0)
    # the exact backlog at the last send: what the counter said, less the transactional
    # messages it had counted by then
    counted_tx = sum(1 for at in arrived.values() if at <= last_send)
    return {
        "bulk": bulk,
        "bulk_api": bulk_api,
        "bulk_enqueue_per_second": bulk / enqueue_seconds,
        "transactional_planned": transactional,
        "transactional_sent": len(sent_at),
        "transactional_arrived": len(arrived),
        "bulk_backlog_at_last_send": bulk - count_at_last_send + counted_tx if sent_at else 0,
        "backlog_ran_out": len(sent_at) < transactional,
        "transactional_latency": percentiles(latencies),
    }


def rate_limit(
    lab: Lab, system: System, *, limit: int, seconds: int, concurrency: int
) -> dict[str, Any]:
    """``limit * seconds`` messages through 2 worker nodes of ``concurrency`` each, with a limit
    of ``limit``/s; the densest 1-second window at the sink against the limit.
    """
    messages = limit * seconds
    sink = lab.start_smtp_sink(dump=True)
    system.prepare(sink, rate_limit=limit)
    for number in range(messages):
        system.send(recipient("rate", number))
    workers = system.start_workers(nodes=2, concurrency=concurrency, beat=True)
    arrivals: list[float] = []
    deadline = time.monotonic() + seconds * 4 + 30
    while len(arrivals) < messages and time.monotonic() < deadline:
        time.sleep(0.05)
        arrivals += [at for _, at in sink.new_arrivals()]
    for proc in workers:
        lab.stop(proc)
    lab.stop(sink.proc)
    arrivals.sort()
    return {
        "limit_per_second": limit,
        "messages": messages,
        "arrived": len(arrivals),
        "max_in_1s_window": max_in_window(arrivals, 1.0),
        "mean_per_second": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        if len(arrivals) > 1
        else None,
    }


def max_in_window(times: list[float], width: float) -> int:
    """The most of the sorted ``times`` that fall in any half-open window of ``width``."""
    best = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best

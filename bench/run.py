"""``python -m bench``: measure postroom against the seeds' pattern in one run; print a table.

Both systems run on this machine, in this run, against the same throwaway Redis and the same
kind of Postfix smtp-sink, phase by phase (postroom, then the seeds, for each measurement), so
that a neighbour's load hits both alike. Every process started is stopped at the end, also on
Ctrl-C or an error. The figures are also written as JSON to ``bench/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import measure
from bench.services import REPO, Lab, find_smtp_sink, postgres_available
from bench.systems import PostroomSystem, SeedsSystem, System

RESULTS = REPO / "bench" / "results"
# Piped into a file or CI log, rich would wrap the table at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class Row:
    """One line of the table: a metric, both figures, and which way is better."""

    metric: str
    unit: str
    postroom: float | None
    seeds: float | None
    higher_is_better: bool | None = None  # None: no ratio is printed
    note: str = ""
    postroom_text: str | None = None  # printed instead of a figure ("n/a (...)")

    @property
    def ratio(self) -> float | None:
        """postroom ÷ seeds."""
        if self.higher_is_better is None or not self.postroom or not self.seeds:
            return None
        return self.postroom / self.seeds


PHASES = ("e2e", "api", "bulk", "rate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    # postroom drains 3,000 in about a second: too short a window for a steady rate
    parser.add_argument("--messages", type=int, default=int(env("BENCH_MESSAGES", "10000")))
    parser.add_argument("--api-requests", type=int, default=int(env("BENCH_API_REQUESTS", "2000")))
    parser.add_argument("--api-clients", type=int, default=50)
    parser.add_argument(
        "--bulk",
        type=int,
        default=int(env("BENCH_BULK", "20000")),
        help="bulk backlog; it must outlast the transactional sends for both systems",
    )
    parser.add_argument(
        "--only",
        choices=PHASES,
        action="append",
        help="run only this group of phases (repeatable); the table leaves the rest empty",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        # one round on a shared VM can lose a third of its rate to neighbours (2026-12-07:
        # 9.78x, then 16.55x ten minutes later); the median of three is the figure to quote
        default=int(env("BENCH_ROUNDS", "3")),
        help="end-to-end rounds, the systems interleaved; the table shows the median round",
    )
    parser.add_argument("--transactional", type=int, default=50)
    parser.add_argument("--transactional-interval", type=float, default=0.1)
    parser.add_argument("--rate-limit", type=int, default=10)
    # the figure: 2 worker processes of concurrency 4 sharing the limit for 60 s
    parser.add_argument("--rate-seconds", type=int, default=60)
    parser.add_argument("--rate-concurrency", type=int, default=4)
    parser.add_argument(
        "--sqlite", action="store_true", help="also run postroom's 2-process row on SQLite"
    )
    return parser.parse_args(argv)


def describe_environment(database: str) -> dict[str, Any]:
    """What the figures depend on: machine, load, versions, and which postroom was measured."""
    import postroom

    def run(*argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)
        return done.stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis_server": run("redis-server", "--version"),
        "smtp_sink": str(find_smtp_sink()[0]),
        "postroom_database": database,
        "postroom_source": str(Path(postroom.__file__).parent),
        "git_commit": run("git", "rev-parse", "--short", "HEAD"),
        "git_src_changes": bool(run("git", "status", "--porcelain", "src")),
    }


def attempt(label: str, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase; a failure is recorded (and printed) instead of ending the run."""
    console.print(f"[bold]▸[/] {label}", highlight=False)
    started = time.monotonic()
    try:
        result = phase()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        console.print(f"  [red]failed:[/] {type(error).__name__}: {error}", highlight=False)
        return {"error": f"{type(error).__name__}: {error}"}
    console.print(f"  done in {time.monotonic() - started:.1f}s", style="dim")
    return result


def _of_round(label: str, number: int, args: argparse.Namespace) -> str:
    """``label``, naming round ``number`` (from 0) when there is more than one."""
    return f"{label}, round {number + 1} of {args.rounds}" if args.rounds > 1 else label


def run_end_to_end(
    lab: Lab, args: argparse.Namespace, postroom: PostroomSystem, systems: tuple[System, ...]
) -> dict[str, dict[str, Any]]:
    """The end-to-end rounds, interleaving the systems, and postroom's send() with text given."""
    rounds: dict[str, list[dict[str, Any]]] = {}
    with_text: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    for number in range(args.rounds):
        for concurrency in (1, 2):
            for system in systems:
                label = _of_round(
                    f"end to end, {args.messages} messages, 1 worker of {concurrency}", number, args
                )
                rounds.setdefault(f"e2e_c{concurrency}_{system.name}", []).append(
                    attempt(
                        f"{label}: {system.name}",
                        functools.partial(
                            measure.end_to_end,
                            lab,
                            system,
                            messages=args.messages,
                            concurrency=concurrency,
                        ),
                    )
                )
        label = f"send() with the text part given, {args.messages} messages"
        label = _of_round(label, number, args)
        with_text.append(
            attempt(
                f"{label}: postroom",
                functools.partial(measure.send_with_text, lab, postroom, messages=args.messages),
            )
        )
        if postroom.database == "postgresql":
            label = _of_round(f"durable INSERT alone, {args.messages} rows", number, args)
            floor.append(
                attempt(
                    f"{label}: psycopg",
                    functools.partial(measure.commit_floor, lab, messages=args.messages),
                )
            )
    results = {key: median_round(results_of_rounds) for key, results_of_rounds in rounds.items()}
    results["send_text_postroom"] = producer_rounds(with_text)
    if floor:
        results["commit_floor"] = producer_rounds(floor)
    return results


def producer_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A producer loop's rounds with their medians; the last round's error if none finished."""
    done = [r for r in rounds if "enqueue_latency" in r]
    return {"rounds": rounds, **producer_medians(done)} if done else rounds[-1]


def run_phases(
    lab: Lab, args: argparse.Namespace, postroom: PostroomSystem, seeds: SeedsSystem
) -> dict[str, dict[str, Any]]:
    """Every measurement, postroom first then the seeds for each; raw results by phase."""
    results: dict[str, dict[str, Any]] = {}
    systems: tuple[System, ...] = (postroom, seeds)
    wanted = set(args.only or PHASES)
    if "e2e" in wanted:
        results |= run_end_to_end(lab, args, postroom, systems)
    if args.sqlite and "e2e" in wanted:
        sqlite = PostroomSystem(lab, "sqlite")
        results["e2e_c2_postroom_sqlite"] = attempt(
            f"end to end, {args.messages} messages, 1 worker of 2: postroom on SQLite",
            functools.partial(
                measure.end_to_end, lab, sqlite, messages=args.messages, concurrency=2
            ),
        )
        sqlite.close()
    for system in systems if "api" in wanted else ():
        results[f"api_{system.name}"] = attempt(
            f"POST /v1/messages x{args.api_requests}, {args.api_clients} clients: {system.name}",
            functools.partial(
                measure.api_load, lab, system, requests=args.api_requests, clients=args.api_clients
            ),
        )
    for system in systems if "bulk" in wanted else ():
        results[f"bulk_{system.name}"] = attempt(
            f"bulk backlog of {args.bulk}, then {args.transactional} transactional: {system.name}",
            functools.partial(
                measure.bulk_then_transactional,
                lab,
                system,
                bulk=args.bulk,
                transactional=args.transactional,
                interval=args.transactional_interval,
            ),
        )
    for system in systems if "rate" in wanted else ():
        if system is postroom and not postroom.supports_limits():
            results["rate_postroom"] = {"skipped": "n/a (limits not built)"}
            continue
        results[f"rate_{system.name}"] = attempt(
            f"rate limit {args.rate_limit}/s, 2 worker nodes: {system.name}",
            functools.partial(
                measure.rate_limit,
                lab,
                system,
                limit=args.rate_limit,
                seconds=args.rate_seconds,
                concurrency=args.rate_concurrency,
            ),
        )
    return results


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median rate, with every round's rate and producer p99 beside it.

    Neighbours on a shared VM (CPU steal) can halve one run's figures; rounds interleave the
    two systems, and the median round is the one the table shows.
    """
    done = [r for r in rounds if "msgs_per_second" in r]
    if not done:
        return rounds[-1]
    ranked = sorted(done, key=lambda r: r["msgs_per_second"])
    median = dict(ranked[(len(ranked) - 1) // 2])
    median["rounds_msgs_per_second"] = [r["msgs_per_second"] for r in done]
    # the producer's p99 is a figure of its own: its median over the rounds, not the p99 of
    # whichever round had the median rate
    median |= producer_medians(done)
    if len(rounds) > 1:
        median["all_rounds"] = rounds
    return median


def producer_medians(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's producer p99, and the medians over the rounds of its p50 and p99."""
    p99s = [_get(r, "enqueue_latency", "p99_ms") for r in done]
    p50s = [_get(r, "enqueue_latency", "p50_ms") for r in done]
    return {
        "rounds_enqueue_p99_ms": p99s,
        "enqueue_p99_ms_median": statistics.median(p for p in p99s if p is not None),
        "enqueue_p50_ms_median": statistics.median(p for p in p50s if p is not None),
    }


def _get(result: dict[str, Any], *path: str) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def build_rows(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[Row]:
    """The table's rows from the raw phase results."""

    def pair(prefix: str, *path: str) -> tuple[Any, Any]:
        return (
            _get(results.get(f"{prefix}_postroom", {}), *path),
            _get(results.get(f"{prefix}_seeds", {}), *path),
        )

    clients = args.api_clients
    rows = [
        Row(
            "end to end, 1 worker process",
            "msgs/s ↑",
            *pair("e2e_c1", "msgs_per_second"),
            True,
            _rounds_note(results, "e2e_c1", "rounds_msgs_per_second"),
        ),
        Row(
            "end to end, 2 worker processes",
            "msgs/s ↑",
            *pair("e2e_c2", "msgs_per_second"),
            True,
            _rounds_note(results, "e2e_c2", "rounds_msgs_per_second"),
        ),
    ]
    if args.sqlite:
        rows.append(
            Row(
                "end to end, 2 worker processes, postroom on SQLite",
                "msgs/s ↑",
                _get(results.get("e2e_c2_postroom_sqlite", {}), "msgs_per_second"),
                _get(results.get("e2e_c2_seeds", {}), "msgs_per_second"),
                True,
            )
        )
    rows += [
        Row(
            "worker CPU per message, 2 processes",
            "ms ↓",
            *pair("e2e_c2", "worker_cpu_ms_per_msg"),
            False,
        ),
        Row(
            "machine CPU per message, 2 processes",
            "ms ↓",
            *pair("e2e_c2", "machine_cpu_ms_per_msg"),
            False,
            "every process on the machine",
        ),
        Row(
            "Redis commands per message",
            "count ↓",
            *pair("e2e_c2", "redis_commands_per_msg"),
            False,
        ),
        Row(
            "send() / .delay() latency p50",
            "ms ↓",
            *pair("e2e_c2", "enqueue_p50_ms_median"),
            False,
            "no worker running",
        ),
        Row(
            "send() / .delay() latency p99",
            "ms ↓",
            *pair("e2e_c2", "enqueue_p99_ms_median"),
            False,
            _rounds_note(results, "e2e_c2", "rounds_enqueue_p99_ms") or "no worker running",
        ),
        Row(
            "send(html, text) / .delay() latency p99",
            "ms ↓",
            _get(results.get("send_text_postroom", {}), "enqueue_p99_ms_median"),
            _get(results.get("e2e_c2_seeds", {}), "enqueue_p99_ms_median"),
            False,
            _producer_note(
                results,
                "send_text_postroom",
                "postroom rounds",
                "the application gives the text part (seeds: the same .delay(html))",
            ),
        ),
        Row(
            "durable INSERT alone / .delay() latency p50",
            "ms ↓",
            _get(results.get("commit_floor", {}), "enqueue_p50_ms_median"),
            _get(results.get("e2e_c2_seeds", {}), "enqueue_p50_ms_median"),
            False,
            "psycopg, no postroom code: the commit every send() waits for",
        ),
        Row(
            "durable INSERT alone / .delay() latency p99",
            "ms ↓",
            _get(results.get("commit_floor", {}), "enqueue_p99_ms_median"),
            _get(results.get("e2e_c2_seeds", {}), "enqueue_p99_ms_median"),
            False,
            _producer_note(
                results,
                "commit_floor",
                "rounds",
                "one autocommit INSERT of the email's size per row (bench/measure.py)",
            ),
        ),
        Row(
            f"POST /v1/messages p50, {clients} clients",
            "ms ↓",
            *pair("api", "latency", "p50_ms"),
            False,
            "no worker running",
        ),
        Row(
            f"POST /v1/messages p99, {clients} clients",
            "ms ↓",
            *pair("api", "latency", "p99_ms"),
            False,
        ),
        Row(
            f"POST /v1/messages rate, {clients} clients",
            "req/s ↑",
            *pair("api", "requests_per_second"),
            True,
        ),
        Row(
            f"bulk enqueue rate, {args.bulk:,} messages",
            "msgs/s ↑",
            *pair("bulk", "bulk_enqueue_per_second"),
            True,
            "; ".join(
                f"{name}: {api}"
                for name in ("postroom", "seeds")
                if (api := _get(results.get(f"bulk_{name}", {}), "bulk_api"))
            ),
        ),
        Row(
            "transactional p50 while bulk drains",
            "ms ↓",
            *pair("bulk", "transactional_latency", "p50_ms"),
            False,
            _backlog_warning(results) or "send() call to arrival at the sink",
        ),
        Row(
            "transactional p99 while bulk drains",
            "ms ↓",
            *pair("bulk", "transactional_latency", "p99_ms"),
            False,
            _backlog_note(results),
        ),
        _rate_row(results, args),
        Row(
            "worker memory RSS, 1 process (+ main)",
            "MiB ↓",
            *pair("e2e_c1", "worker_rss_mib"),
            False,
            "after the end-to-end run",
        ),
        Row(
            "worker memory RSS, 2 processes (+ main)",
            "MiB ↓",
            *pair("e2e_c2", "worker_rss_mib"),
            False,
        ),
        Row(
            "worker memory PSS, 2 processes (+ main)",
            "MiB ↓",
            *pair("e2e_c2", "worker_pss_mib"),
            False,
            "shared pages counted once",
        ),
    ]
    return rows


def _producer_note(results: dict[str, dict[str, Any]], key: str, label: str, what: str) -> str:
    """``what`` a producer loop measured, after each round's p99 when there was more than one."""
    p99s = _get(results.get(key, {}), "rounds_enqueue_p99_ms") or []
    rounds = f"{label} {' / '.join(f'{p:.2f}' for p in p99s)}; " if len(p99s) > 1 else ""
    return rounds + what


def _rounds_note(results: dict[str, dict[str, Any]], prefix: str, key: str) -> str:
    """Every round's figure for both systems, when there was more than one round."""
    parts = []
    for name in ("postroom", "seeds"):
        values = _get(results.get(f"{prefix}_{name}", {}), key) or []
        if len(values) > 1:
            parts.append(f"{name} {', '.join(_figure(v) for v in values)}")
    return f"rounds: {'; '.join(parts)}" if parts else ""


def _backlog_note(results: dict[str, dict[str, Any]]) -> str:
    """How much bulk was still queued when the last transactional message was sent."""
    left = [
        f"{name} {_figure(_get(results.get(f'bulk_{name}', {}), 'bulk_backlog_at_last_send'))}"
        for name in ("postroom", "seeds")
    ]
    note = f"bulk still queued at the last send: {', '.join(left)}"
    warning = _backlog_warning(results)
    return f"{warning}; {note}" if warning else note


def _backlog_warning(results: dict[str, dict[str, Any]]) -> str | None:
    """Which systems' backlog ran out before the last transactional send, if any did."""
    ran_out = [
        f"{name} after {_get(result, 'transactional_sent')} of "
        f"{_get(result, 'transactional_planned')} sends"
        for name in ("postroom", "seeds")
        if _get(result := results.get(f"bulk_{name}", {}), "backlog_ran_out")
    ]
    if not ran_out:
        return None
    return f"⚠ NOT VALID, backlog ran out: {', '.join(ran_out)}; raise --bulk"


def _rate_row(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> Row:
    postroom = results.get("rate_postroom", {})
    seeds = results.get("rate_seeds", {})
    means = [
        f"{name} {_figure(_get(result, 'mean_per_second'))}/s"
        for name, result in (("postroom", postroom), ("seeds", seeds))
        if _get(result, "mean_per_second") is not None
    ]
    return Row(
        f"rate limit {args.rate_limit}/s: most in any 1 s window",
        "msgs",
        _get(postroom, "max_in_1s_window"),
        _get(seeds, "max_in_1s_window"),
        None,
        f"limit {args.rate_limit}/s for {args.rate_seconds} s; 2 worker nodes of concurrency "
        f"{args.rate_concurrency}; mean {', '.join(means)}",
        postroom.get("skipped"),
    )


def _figure(value: float | None) -> str:
    if value is None:
        return "—"
    if float(value).is_integer():
        return f"{value:,.0f}"  # a count
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def print_table(rows: list[Row], results: dict[str, dict[str, Any]]) -> None:
    table = Table(title="postroom vs the seeds' pattern (this machine, this run)")
    for column in ("metric", "unit", "postroom", "seeds", "postroom ÷ seeds", "note"):
        table.add_column(column, justify="right" if column in {"postroom", "seeds"} else "left")
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        postroom = row.postroom_text or _figure(row.postroom)
        table.add_row(row.metric, row.unit, postroom, _figure(row.seeds), ratio, row.note)
    console.print(table)
    for name, result in results.items():
        if "error" in result:
            console.print(f"[red]{name} failed:[/] {result['error']}", highlight=False)
    warning = _backlog_warning(results)
    if warning:
        # the transactional rows measure mail behind a backlog; without one they say nothing
        console.print(f"[yellow]transactional while bulk drains: {warning}[/]", highlight=False)


def write_json(
    environment: dict[str, Any],
    args: argparse.Namespace,
    rows: list[Row],
    results: dict[str, dict[str, Any]],
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "environment": environment,
        "arguments": vars(args),
        "rows": [asdict(row) | {"ratio": row.ratio} for row in rows],
        "phases": results,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    find_smtp_sink()  # fail before starting anything when the sink is missing
    unavailable = postgres_available()
    database = "postgresql" if unavailable is None else "sqlite"
    if unavailable:
        console.print(f"[yellow]{unavailable}; postroom runs on SQLite[/]", highlight=False)
    environment = describe_environment(database)
    console.print(environment, highlight=False)
    with Lab() as lab:
        lab.start_redis()
        postroom = PostroomSystem(lab, database)
        seeds = SeedsSystem(lab)
        try:
            results = run_phases(lab, args, postroom, seeds)
        finally:
            postroom.close()
            seeds.close()
    rows = build_rows(results, args)
    print_table(rows, results)
    path = write_json(environment, args, rows, results)
    console.print(f"figures written to {path.relative_to(REPO)}", highlight=False)
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``postroom dev`` end to end: the real command in a subprocess, driven as a new user would."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from postroom.devinbox import list_caught
from tests.servers import free_port

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0
STOP_TIMEOUT = 45.0
CURL_LINE = re.compile(r"^curl -s -X POST .*/v1/messages .*$", re.MULTILINE)


@dataclass
class DevRun:
    """One ``postroom dev`` process and everything it printed so far (stdout and stderr)."""

    process: subprocess.Popen[bytes]
    workdir: Path
    api_port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self.changed:
                self.lines.append(raw.decode(errors="replace"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(
        self, pattern: re.Pattern[str], *, timeout: float = START_TIMEOUT
    ) -> re.Match[str]:
        """Block until the output matches ``pattern``; fail if the command exits first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                match = pattern.search("".join(self.lines))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"no {pattern.pattern!r} in output:\n{''.join(self.lines)}"
                    )
                self.changed.wait(min(remaining, 0.2))

    def child_pids(self) -> dict[str, int]:
        """The pids the supervisor reported for each child."""
        found = re.findall(r"postroom dev: (\w+) is ready \(pid (\d+)\)", self.output)
        return {name: int(pid) for name, pid in found}

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT)


def processes_of(workdir: Path) -> list[int]:
    """Live processes started for ``workdir``: every descendant inherits its POSTROOM_DATA_DIR."""
    marker = f"POSTROOM_DATA_DIR={workdir / '.postroom'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        # A zombie has exited already; it only waits for its parent to collect it.
        if state != "Z" and marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until_gone(workdir: Path, *, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_of(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def postroom_command() -> list[str]:
    script = Path(sys.executable).parent / "postroom"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "postroom"]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh working folder; short, because the broker's unix socket lives under it."""
    path = Path(tempfile.mkdtemp(prefix="pr-dev-"))
    yield path
    kill_all(processes_of(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_dev(workdir: Path) -> Iterator[Callable[[], DevRun]]:
    """Factory: start ``postroom dev`` in ``workdir`` on free ports; all is killed afterwards."""
    runs: list[DevRun] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(
        POSTROOM_API_PORT=str(free_port()),
        POSTROOM_DEV_INBOX_PORT=str(free_port()),
        POSTROOM_DATA_DIR=str(workdir / ".postroom"),
        POSTROOM_DATABASE_URL=f"sqlite:///{workdir / 'postroom.db'}",
    )

    def start() -> DevRun:
        process = subprocess.Popen(
            [*postroom_command(), "dev"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        run = DevRun(process, workdir, int(env["POSTROOM_API_PORT"]))
        run.reader = threading.Thread(target=run.read, daemon=True)
        run.reader.start()
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
    kill_all(processes_of(workdir))
    for run in runs:
        # The pipe reaches EOF once no process that inherited it is left.
        assert run.reader is not None and run.process.stdout is not None
        run.reader.join(timeout=10)
        run.process.stdout.close()


def bearer(curl_line: str) -> dict[str, str]:
    key = re.search(r"Authorization: Bearer (\S+?)'", curl_line)
    assert key is not None, curl_line
    return {"Authorization": f"Bearer {key.group(1)}"}


def wait_until_sent(api: str, message_id: str, headers: dict[str, str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = httpx.get(f"{api}/v1/messages/{message_id}", headers=headers).json()["status"]
        if status == "sent":
            return status
        time.sleep(0.01)
    return status


@pytest.mark.timeout(120)
def test_the_printed_curl_sends_a_first_email_into_the_dev_inbox(start_dev, workdir):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the test runs the printed curl line as a user would")
    dev = start_dev()
    curl_line = dev.wait_for(CURL_LINE).group(0)
    api = f"http://127.0.0.1:{dev.api_port}"

    started = time.monotonic()
    # Exactly what a user pastes: the line through a shell.
    pasted = subprocess.run(["sh", "-c", curl_line], capture_output=True, timeout=30, check=True)
    message = json.loads(pasted.stdout)
    status = wait_until_sent(api, message["id"], bearer(curl_line), timeout=30.0)
    elapsed = time.monotonic() - started
    print(f"\npostroom dev: curl -> sent in {elapsed:.3f} s")
    assert status == "sent", dev.output

    caught = httpx.get(f"{api}/v1/dev/inbox", headers=bearer(curl_line)).json()["items"]
    assert [(c["subject"], c["rcpt_tos"]) for c in caught] == [
        ("Hello from postroom", ["you@example.com"])
    ]
    [on_disk] = list_caught(workdir / ".postroom" / "inbox")
    assert on_disk.parsed.get_content().strip() == "It works."

    pids = dev.child_pids()
    assert set(pids) == {"redis", "worker", "api"}
    assert dev.stop(signal.SIGINT) == 0, dev.output
    assert wait_until_gone(workdir) == []
    output = dev.output
    # Stopped in order: the API first, the broker last.
    order = [output.index(f"stopping {name} (pid") for name in ("api", "worker", "redis")]
    assert order == sorted(order), output
    assert "everything is stopped" in output


@pytest.mark.timeout(180)
def test_a_restart_reuses_the_key_and_a_dead_worker_stops_everything(start_dev, workdir):
    first = start_dev()
    first_curl = first.wait_for(CURL_LINE).group(0)
    assert first.stop(signal.SIGTERM) == 0, first.output
    key_file = workdir / ".postroom" / "dev-api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600

    second = start_dev()
    assert second.wait_for(CURL_LINE).group(0) == first_curl
    worker = second.child_pids()["worker"]
    os.kill(worker, signal.SIGKILL)
    code = second.process.wait(timeout=STOP_TIMEOUT)
    output = second.output
    assert code == 1, output
    assert f"worker (pid {worker}) was killed by SIGKILL; stopping everything" in output
    # The killed worker's pool processes went with it, and the API and Redis were stopped.
    assert wait_until_gone(workdir) == []
    assert "stopping api (pid" in output and "stopping redis (pid" in output

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from postroom.supervisor import ChildFailed, ChildSpec, Interrupted, Supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def recorder(name: str, log: Path, *, spawn: bool = False) -> ChildSpec:
    """A child that writes 'started', and its name to ``log`` when it gets SIGTERM."""
    code = f"""
        import os, signal, subprocess, sys, time
        def stop(signum, frame):
            with open({str(log)!r}, "a") as f:
                f.write({name!r} + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        if {spawn!r}:
            # a grandchild in the same process group, like a Celery pool process
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print(child.pid, flush=True, file=open({str(log)!r} + ".grandchild", "w"))
        open({str(log)!r} + "." + {name!r}, "w").close()
        while True:
            time.sleep(0.05)
    """
    marker = Path(f"{log}.{name}")
    return ChildSpec(name=name, argv=python(code), ready=marker.exists, ready_timeout=20)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # a zombie has exited; it only waits to be collected by its parent
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_stop_in_reverse_order_of_start(tmp_path):
    log = tmp_path / "stops"
    stopped = []
    with Supervisor() as supervisor:
        first = supervisor.start(recorder("first", log))
        supervisor.push_cleanup("in-process", lambda: stopped.append(log.read_text().split()))
        second = supervisor.start(recorder("second", log))
    assert log.read_text().split() == ["second", "first"]
    assert stopped == [["second"]]
    assert first.process.returncode == 0 and second.process.returncode == 0


def test_a_child_that_dies_is_reported_and_its_process_group_is_killed(tmp_path):
    log = tmp_path / "stops"
    killed = r"worker \(pid \d+\) was killed by SIGKILL"
    with pytest.raises(ChildFailed, match=killed) as failure, Supervisor() as supervisor:
        supervisor.start(recorder("broker", log))
        worker = supervisor.start(recorder("worker", log, spawn=True))
        grandchild = int(Path(f"{log}.grandchild").read_text())
        assert alive(grandchild)
        os.kill(worker.pid, signal.SIGKILL)
        supervisor.wait()
    assert failure.value.name == "worker"
    assert not alive(grandchild)
    # the survivors were still stopped gracefully
    assert log.read_text().split() == ["broker"]


def test_a_child_that_exits_while_starting_fails_the_start():
    spec = ChildSpec(name="api", argv=python("import sys; sys.exit(3)"), ready=lambda: False)
    with (
        Supervisor() as supervisor,
        pytest.raises(ChildFailed, match="exited with code 3 on start"),
    ):
        supervisor.start(spec)


def sleeper(pid_file: Path, *, ignore_sigterm: bool = False) -> list[str]:
    """A child that writes its pid to ``pid_file`` (after ignoring SIGTERM, if asked) and sleeps."""
    return python(f"""
        import os, signal, time
        if {ignore_sigterm!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open({str(pid_file)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
        time.sleep(60)
    """)


def test_a_child_that_is_never_ready_fails_the_start_and_is_stopped(tmp_path):
    pid_file = tmp_path / "pid"
    spec = ChildSpec(name="api", argv=sleeper(pid_file), ready=lambda: False, ready_timeout=1)
    with pytest.raises(ChildFailed, match="was not ready after 1 s"), Supervisor() as supervisor:
        supervisor.start(spec)
    assert not alive(int(pid_file.read_text()))


def test_a_stop_signal_ends_the_wait_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with Supervisor() as supervisor:
        child = supervisor.start(recorder("worker", tmp_path / "stops"))
        os.kill(os.getpid(), signal.SIGTERM)
        assert supervisor.wait() == signal.SIGTERM
    assert child.process.returncode == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_signal_while_starting_interrupts_the_start_and_stops_the_child(tmp_path):
    pid_file = tmp_path / "pid"

    def ready() -> bool:
        if pid_file.exists():
            os.kill(os.getpid(), signal.SIGINT)
        return False

    spec = ChildSpec(name="worker", argv=sleeper(pid_file), ready=ready)
    with pytest.raises(Interrupted, match="SIGINT"), Supervisor() as supervisor:
        supervisor.start(spec)
    assert not alive(int(pid_file.read_text()))


def test_a_child_ignoring_sigterm_is_killed_after_its_grace_period(tmp_path):
    pid_file = tmp_path / "pid"
    spec = ChildSpec(
        name="stubborn",
        argv=sleeper(pid_file, ignore_sigterm=True),
        ready=pid_file.exists,
        stop_timeout=0.3,
    )
    with Supervisor() as supervisor:
        child = supervisor.start(spec)
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert child.process.returncode == -signal.SIGKILL

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text

from postroom.db import create_db_engine
from postroom.schema import VERSION_TABLE, downgrade, upgrade

# Libraries that only other commands, the API or template rendering use. `postroom worker`
# loads the whole CLI and the client before Celery forks its pool, so any of these imported
# on that path would sit in the memory of every worker process.
NOT_IN_WORKERS = (
    "aiosmtpd",  # the dev inbox's SMTP server
    "alembic",  # postroom migrate
    "css_inline",  # template rendering
    "dkim",  # loaded on the first signed delivery only
    "fastapi",  # postroom api
    "httpx",  # postroom dev
    "jinja2",  # template rendering
    "uvicorn",  # postroom api
)


def test_the_worker_command_path_imports_no_library_that_only_other_paths_use():
    code = textwrap.dedent(
        f"""
        import sys

        from postroom.cli.main import main_app
        from postroom.client import Postroom
        from postroom.settings import Settings

        main_app()  # registers every command, as `postroom worker` does
        client = Postroom(Settings(_env_file=None, database_url="sqlite://"))
        client.celery
        client.close()
        print(sorted({{name.split(".")[0] for name in sys.modules}} & {set(NOT_IN_WORKERS)!r}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == "[]"


def test_the_worker_command_builds_celerys_worker_with_its_options_without_celerys_cli(
    sqlite_url, tmp_path
):
    # Worker.start replaced: the worker is built for real, then reports instead of running
    code = textwrap.dedent(
        """
        import sys

        from celery.apps.worker import Worker

        from postroom.cli.main import main_app

        def report(worker):
            consumer_steps = {step.name: step.enabled for step in worker.consumer.blueprint.order}
            print(repr({
                "hostname": worker.hostname,
                "concurrency": worker.concurrency,
                "loglevel": worker.loglevel,
                "queues": list(worker.app.amqp.queues.consume_from),
                "beat": worker.blueprint.steps["celery.worker.components.Beat"].enabled,
                "gossip": consumer_steps["celery.worker.consumer.gossip.Gossip"],
                "mingle": consumer_steps["celery.worker.consumer.mingle.Mingle"],
                "celery_cli": sorted(
                    {"celery.bin.celery", "click_repl", "prompt_toolkit"} & set(sys.modules)
                ),
            }))
            worker.exitcode = 3

        Worker.start = report
        main_app()(sys.argv[1:])
        """
    )
    argv = ["worker", "-q", "-c", "3", "-l", "debug", "-B"]
    argv += ["-Q", "postroom.maintenance,postroom.transactional"]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=os.environ | _env(sqlite_url, tmp_path),
    )
    assert result.returncode == 3, result.stderr  # the worker's exit code is the command's
    reported = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert reported["hostname"].startswith("postroom@")
    assert "%" not in reported["hostname"]
    assert reported["concurrency"] == 3
    assert reported["loglevel"] == logging.DEBUG
    assert reported["queues"] == ["postroom.maintenance", "postroom.transactional"]
    assert reported["beat"] is True
    assert reported["gossip"] is False and reported["mingle"] is False
    assert reported["celery_cli"] == []


def test_worker_and_beat_refuse_an_unknown_log_level_with_exit_2(sqlite_url, tmp_path, started):
    env = _env(sqlite_url, tmp_path)
    for command in ("worker", "beat"):
        result = _run(env, command, "--loglevel", "chatty")
        assert result.exit_code == 2, result.output
        assert "'chatty' is not one of" in result.output
    assert started == []
    assert _run(env, "beat", "-l", "warning").exit_code == 0
    assert started == ["beat"]


def test_the_worker_command_freezes_what_each_pool_process_inherits(
    sqlite_url, tmp_path, monkeypatch
):
    import gc

    from celery.signals import worker_process_init
    from typer.testing import CliRunner

    from postroom.cli import services
    from postroom.cli.main import main_app

    frozen_in_pool: list[int] = []

    def fork_one_pool_process(app, **options):
        # what billiard runs in each process it forks, here in this one
        worker_process_init.send(sender=None)
        frozen_in_pool.append(gc.get_freeze_count())
        return 0

    monkeypatch.setattr(services, "run_celery_worker", fork_one_pool_process)
    monkeypatch.chdir(tmp_path)
    env = {
        "POSTROOM_DATABASE_URL": sqlite_url,
        "POSTROOM_DATA_DIR": str(tmp_path / ".postroom"),
    }
    assert gc.get_freeze_count() == 0
    try:
        result = CliRunner().invoke(main_app(), ["worker", "--quiet"], env=env)
        assert result.exit_code == 0, result.output
        assert len(frozen_in_pool) == 1 and frozen_in_pool[0] > 0
    finally:
        gc.unfreeze()
        worker_process_init.disconnect(dispatch_uid="postroom.freeze_inherited_objects")


def _run(env, *args):
    from typer.testing import CliRunner

    from postroom.cli.main import main_app

    return CliRunner().invoke(main_app(), list(args), env=env)


def _env(database_url, tmp_path):
    return {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def started(monkeypatch):
    """What the long-running commands would have started, instead of starting it."""
    import uvicorn

    from postroom.cli import services

    calls: list[str] = []
    monkeypatch.setattr(services, "run_celery_worker", lambda app, **_: calls.append("worker"))
    monkeypatch.setattr(services, "run_celery_beat", lambda app, **_: calls.append("beat"))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append("api"))
    return calls


def test_commands_on_a_database_never_migrated_say_to_run_migrate(tmp_path, started):
    env = _env(f"sqlite:///{tmp_path / 'new.db'}", tmp_path)
    for args in (["status", "0" * 26], ["keys", "list"], ["worker"], ["beat"], ["api"]):
        result = _run(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "the database has no postroom tables" in result.stderr
        assert "run `postroom migrate`" in result.stderr
    assert started == []

    assert _run(env, "migrate").exit_code == 0
    assert _run(env, "worker").exit_code == 0
    assert started == ["worker"]


def test_long_running_commands_refuse_a_database_behind_and_warn_of_one_ahead(
    sqlite_url, tmp_path, started
):
    engine = create_db_engine(sqlite_url)
    downgrade(engine, "0005")
    env = _env(sqlite_url, tmp_path)
    behind = _run(env, "worker")
    assert behind.exit_code == 2
    assert "the database is at revision 0005, this postroom needs" in behind.stderr
    assert started == []

    upgrade(engine)
    with engine.begin() as connection:  # as a newer release's migration would leave it
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9001'"))
    engine.dispose()
    ahead = _run(env, "worker")
    assert ahead.exit_code == 0, ahead.output
    assert "warning: the database is at revision 9001, newer than" in ahead.stderr
    assert started == ["worker"]


def test_a_command_on_a_database_without_postroom_tables_exits_2_naming_the_migration(
    sqlite_url, tmp_path
):
    engine = create_db_engine(sqlite_url)
    downgrade(engine, "base")
    engine.dispose()
    env = _env(sqlite_url, tmp_path)
    for args in (["status", "0" * 26], ["templates", "list"], ["cancel", "0" * 26]):
        result = _run(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "the database has no postroom tables" in result.stderr
        assert "run `postroom migrate`" in result.stderr
        assert "Traceback" not in result.output


def test_an_unreachable_database_exits_1_naming_it_without_its_password(tmp_path, started):
    password = "hunter2-s3cret"
    # Port 1 refuses connections at once, so the failure is fast and certain.
    env = _env(f"postgresql://postroom:{password}@127.0.0.1:1/postroom", tmp_path)
    for args in (["status", "0" * 26], ["worker"], ["migrate"]):
        result = _run(env, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "postgresql://postroom:***@127.0.0.1:1/postroom" in result.stderr
        assert "Connection refused" in result.stderr
        assert password not in result.output
        assert "Traceback" not in result.output
    assert started == []

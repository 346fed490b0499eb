from __future__ import annotations

import subprocess
import sys
import textwrap

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


def test_the_worker_command_freezes_what_each_pool_process_inherits(tmp_path, monkeypatch):
    import gc

    from celery import Celery
    from celery.signals import worker_process_init
    from typer.testing import CliRunner

    from postroom.cli.main import main_app

    frozen_in_pool: list[int] = []

    def fork_one_pool_process(self, argv):
        # what billiard runs in each process it forks, here in this one
        worker_process_init.send(sender=None)
        frozen_in_pool.append(gc.get_freeze_count())

    monkeypatch.setattr(Celery, "worker_main", fork_one_pool_process)
    monkeypatch.chdir(tmp_path)
    env = {
        "POSTROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'postroom.db'}",
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

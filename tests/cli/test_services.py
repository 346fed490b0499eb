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

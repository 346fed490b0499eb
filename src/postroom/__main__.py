"""``python -m postroom``: the ``postroom`` command, for when the console script is not on PATH."""

from __future__ import annotations

from postroom.cli.main import run

if __name__ == "__main__":
    run()

"""``postroom keys``: create, list and revoke the API keys of the REST API."""

from __future__ import annotations

from datetime import datetime

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postroom import api_keys
from postroom.cli.main import exits_on_errors, fail, state

console = Console()

app = typer.Typer(
    help="Create, list and revoke REST API keys (only their hashes are stored).",
    no_args_is_help=True,
)


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


@app.command()
@exits_on_errors
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="What the key is for, e.g. 'web app'."),
) -> None:
    """Create a key and print it once, alone on the last line: only its hash is kept."""
    client = state(ctx).client()
    try:
        with client.sessions.begin() as session:
            created = api_keys.create_key(session, name)
    except ValueError as error:
        raise fail(str(error)) from None
    typer.echo(f"created API key {created.key.id} ({created.key.name}); store it now:")
    typer.echo(created.secret)


@app.command("list")
@exits_on_errors
def list_(ctx: typer.Context) -> None:
    """Show every key, revoked ones included (never the keys themselves)."""
    client = state(ctx).client()
    with client.sessions() as session:
        keys = api_keys.list_keys(session)
    table = Table(box=box.SIMPLE_HEAD)
    # Ids and hints are what people copy, so they never wrap; on a narrow terminal the name
    # wraps instead, and a date breaks between day and time rather than being cut short.
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    table.add_column("hint", no_wrap=True)
    table.add_column("created", min_width=10)
    table.add_column("revoked", min_width=10)
    for key in keys:
        table.add_row(
            key.id, escape(key.name), key.hint, _when(key.created_at), _when(key.revoked_at)
        )
    console.print(table)


@app.command()
@exits_on_errors
def revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id.")) -> None:
    """Revoke a key: requests presenting it are refused within 5 seconds.

    Each API process remembers a valid key for up to 5 seconds, to spare a database lookup
    per request.
    """
    client = state(ctx).client()
    with client.sessions.begin() as session:
        key = api_keys.revoke_key(session, key_id)
    typer.echo(f"revoked API key {key.id} ({key.name}) at {_when(key.revoked_at)}")

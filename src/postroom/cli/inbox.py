"""``postroom inbox``: list what the dev inbox caught, or show one caught message."""

from __future__ import annotations

import sys
from email.message import EmailMessage

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postroom.cli.main import exits_on_errors, fail, state
from postroom.devinbox import CaughtMessage, get_caught, list_caught

console = Console()


def _header(parsed: EmailMessage, name: str) -> str | None:
    value = parsed.get(name)
    return None if value is None else str(value)


def _addresses(parsed: EmailMessage, name: str) -> str | None:
    """Bare addresses of an address header: display names would crowd a narrow table."""
    header = parsed.get(name)
    if header is None:
        return None
    addresses = getattr(header, "addresses", None)
    if addresses:
        return ", ".join(address.addr_spec for address in addresses)
    return str(header)


def _caught_table(messages: list[CaughtMessage]) -> Table:
    table = Table(title=f"dev inbox: {len(messages)} newest", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=26)
    table.add_column("received", no_wrap=True)
    table.add_column("from", overflow="fold")
    table.add_column("to", overflow="fold")
    table.add_column("subject", ratio=2)
    for caught in messages:
        parsed = caught.parsed
        table.add_row(
            caught.id,
            caught.received_at.astimezone().strftime("%m-%d %H:%M:%S"),
            escape(_addresses(parsed, "From") or caught.mail_from),
            escape(_addresses(parsed, "To") or ", ".join(caught.rcpt_tos)),
            escape(_header(parsed, "Subject") or ""),
        )
    return table


def _body_text(parsed: EmailMessage) -> tuple[str, str | None]:
    """The text part, else the HTML part, with a label naming which one it is."""
    for subtype in ("plain", "html"):
        part = parsed.get_body(preferencelist=(subtype,))
        if part is not None:
            content = part.get_content()
            if isinstance(content, str):
                return f"text/{subtype}", content
    return "body", None


def _show(caught: CaughtMessage) -> None:
    parsed = caught.parsed
    received = caught.received_at.astimezone().isoformat(timespec="seconds")
    console.print(f"[bold]id[/]             {caught.id}", highlight=False)
    console.print(f"[bold]received[/]       {received}", highlight=False)
    console.print(f"[bold]envelope from[/]  {escape(caught.mail_from)}", highlight=False)
    console.print(f"[bold]envelope to[/]    {escape(', '.join(caught.rcpt_tos))}", highlight=False)
    console.print()
    for name, value in parsed.items():
        console.print(f"[bold]{escape(name)}:[/] {escape(str(value))}", highlight=False)
    label, body = _body_text(parsed)
    console.print(f"\n[dim]--- {label} ---[/]")
    console.print(body if body is not None else "(no text or HTML part)", markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    @exits_on_errors
    def inbox(
        ctx: typer.Context,
        caught_id: str | None = typer.Argument(
            None, metavar="[ID]", help="Show this caught message instead of the list."
        ),
        limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many to list."),
        raw: bool = typer.Option(False, "--raw", help="With ID: print the message source."),
    ) -> None:
        """List the mail the dev inbox caught, newest first, or show one message."""
        directory = state(ctx).settings.dev_inbox_dir
        if caught_id is None:
            if raw:
                raise fail("--raw needs the ID of a caught message")
            messages = list_caught(directory, limit=limit)
            if not messages:
                console.print(
                    f"The dev inbox ({escape(str(directory))}) is empty: "
                    "mail sent while `postroom dev` runs lands there."
                )
                return
            console.print(_caught_table(messages))
            return
        caught = get_caught(directory, caught_id)
        if caught is None:
            raise fail(f"the dev inbox ({directory}) holds no message with id {caught_id!r}")
        if raw:
            sys.stdout.buffer.write(caught.raw)
            sys.stdout.buffer.flush()
        else:
            _show(caught)

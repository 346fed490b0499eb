"""Producer commands: ``send``, ``status`` and ``cancel``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postroom.attachments import Attachment
from postroom.cli.main import exits_on_errors, fail, state
from postroom.cli.templates import parse_context

console = Console()


def _parse_headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep:
            raise fail(f"--header takes 'Name: value', got {pair!r}")
        headers[name.strip()] = value.strip()
    return headers


def _parse_when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--send-at takes an ISO 8601 time with an offset, got {value!r}") from None
    if when.tzinfo is None:
        raise fail("--send-at needs a time zone offset, e.g. 2026-12-01T09:00:00+01:00")
    return when


def _read_attachments(attach: list[Path], inline: list[Path]) -> list[Attachment]:
    files = [(path, False) for path in attach] + [(path, True) for path in inline]
    try:
        # an inline image's content id is its file name: the HTML says <img src="cid:logo.png">
        return [Attachment.from_path(path, inline=is_inline) for path, is_inline in files]
    except OSError as error:
        raise fail(f"cannot read {error.filename}: {error.strerror}") from None


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    @exits_on_errors
    def send(
        ctx: typer.Context,
        to: list[str] = typer.Option(..., "--to", help="Recipient; repeat for several."),
        subject: str | None = typer.Option(None, "--subject", "-s", help="Unless --template."),
        text: str | None = typer.Option(None, "--text", help="Plain-text body."),
        html: str | None = typer.Option(None, "--html", help="HTML body."),
        template: str | None = typer.Option(
            None, "--template", help="Render this stored template instead of --subject/--text."
        ),
        context: str | None = typer.Option(
            None, "--context", help="The template's variables as a JSON object."
        ),
        context_file: Path | None = typer.Option(
            None, "--context-file", dir_okay=False, help="A file holding the JSON object."
        ),
        locale: str | None = typer.Option(
            None, "--locale", help="Template variant, e.g. fr-CA (falls back to fr)."
        ),
        attach: list[Path] = typer.Option(
            [], "--attach", dir_okay=False, help="A file to attach; repeatable."
        ),
        inline: list[Path] = typer.Option(
            [], "--inline", dir_okay=False, help="An image for the HTML (cid:FILENAME); repeatable."
        ),
        from_: str | None = typer.Option(None, "--from", help="Defaults to POSTROOM_DEFAULT_FROM."),
        cc: list[str] = typer.Option([], "--cc"),
        bcc: list[str] = typer.Option([], "--bcc"),
        reply_to: list[str] = typer.Option([], "--reply-to"),
        header: list[str] = typer.Option([], "--header", help="'Name: value'; repeatable."),
        tag: list[str] = typer.Option([], "--tag"),
        stream: str = typer.Option("transactional", "--stream", help="transactional or bulk."),
        send_at: str | None = typer.Option(None, "--send-at", help="ISO 8601 time with offset."),
        idempotency_key: str | None = typer.Option(None, "--idempotency-key"),
    ) -> None:
        """Put one message in the outbox; prints its id and status."""
        if template is None and (context, context_file, locale) != (None, None, None):
            raise fail("--context, --context-file and --locale go with --template")
        variables = parse_context(context, context_file) if template is not None else None
        message = (
            state(ctx)
            .client()
            .send(
                to,
                subject,
                from_=from_,
                text=text,
                html=html,
                cc=cc,
                bcc=bcc,
                reply_to=reply_to,
                headers=_parse_headers(header),
                tags=tag,
                stream=stream,
                send_at=_parse_when(send_at),
                idempotency_key=idempotency_key,
                template=template,
                context=variables,
                locale=locale,
                attachments=_read_attachments(attach, inline),
            )
        )
        typer.echo(f"{message.id} {message.status}")

    @app.command()
    @exits_on_errors
    def status(
        ctx: typer.Context, message_id: str = typer.Argument(..., help="Message id.")
    ) -> None:
        """Show a message's status, attempts and every event."""
        client = state(ctx).client()
        message = client.get_message(message_id)
        console.print(
            f"[bold]{message.id}[/]  {message.status}  attempts={message.attempts}  "
            f"to={escape(', '.join(message.to))}  subject={escape(repr(message.subject))}",
            highlight=False,
        )
        table = Table("at", "status", "code", "detail")
        for event in client.get_events(message_id):
            table.add_row(
                event.at.isoformat(timespec="milliseconds"),
                event.status,
                "" if event.code is None else str(event.code),
                escape(event.detail or ""),  # a server's reply, in its own words
            )
        console.print(table)

    @app.command()
    @exits_on_errors
    def cancel(
        ctx: typer.Context, message_id: str = typer.Argument(..., help="Message id.")
    ) -> None:
        """Cancel a message that has not started sending."""
        message = state(ctx).client().cancel(message_id)
        typer.echo(f"{message.id} {message.status}")

"""``postroom templates``: list, show, load from a folder and preview versioned templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from postroom.cli.main import exits_on_errors, fail, state

if TYPE_CHECKING:
    from postroom.templates import Template

console = Console()

app = typer.Typer(
    help="Versioned email templates: list, show, load from a folder, preview a render.",
    no_args_is_help=True,
)


def parse_context(text: str | None, path: Path | None) -> dict[str, Any]:
    """The context from ``--context`` JSON or a ``--context-file``; exits with code 2 if bad."""
    if text is not None and path is not None:
        raise fail("give --context or --context-file, not both")
    source = "--context"
    if path is not None:
        source = f"--context-file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise fail(f"{source}: cannot read it: {error}") from None
    if text is None:
        return {}
    try:
        context = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"{source} is not valid JSON: {error}") from None
    if not isinstance(context, dict):
        raise fail(f'{source} must be a JSON object, like \'{{"name": "Ada"}}\'')
    return context


def _label(template: Template) -> str:
    locale = f" [{template.locale}]" if template.locale else ""
    return f"{template.name}{locale} v{template.version}"


@app.command("list")
@exits_on_errors
def list_(ctx: typer.Context) -> None:
    """Show the latest version of every template in every locale."""
    rows = state(ctx).client().list_templates()
    if not rows:
        typer.echo("no templates; add some with `postroom templates sync DIR`")
        return
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("locale", no_wrap=True)
    table.add_column("version", justify="right")
    table.add_column("parts")
    table.add_column("created", min_width=10)
    for template in rows:
        parts = ["subject"] + [part for part in ("text", "html") if getattr(template, part)]
        table.add_row(
            template.name,
            template.locale or "(default)",
            str(template.version),
            ", ".join(parts),
            template.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
        )
    console.print(table)


@app.command()
@exits_on_errors
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The template's name."),
    locale: str | None = typer.Option(None, "--locale", help="e.g. fr-CA; falls back to fr."),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: the newest."),
) -> None:
    """Print a template version's source: the one a send with this locale would use."""
    template = state(ctx).client().get_template(name, locale=locale, version=version)
    typer.echo(f"# {_label(template)}, saved {template.created_at:%Y-%m-%d %H:%M:%SZ}")
    typer.echo(f"Subject: {template.subject}")
    for part in ("text", "html"):
        source = getattr(template, part)
        if source is not None:
            typer.echo(f"\n# {part}\n{source.rstrip()}")


@app.command()
@exits_on_errors
def sync(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ...,
        exists=True,
        file_okay=False,
        help="A folder of NAME[.LOCALE].subject, .txt and .html files.",
    ),
) -> None:
    """Save every template in a folder whose files changed, as a new version."""
    saved = state(ctx).client().sync_templates(directory)
    for template in saved:
        typer.echo(f"saved {_label(template)}")
    if not saved:
        typer.echo("every template is up to date")


@app.command()
@exits_on_errors
def render(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The template's name."),
    context: str | None = typer.Option(None, "--context", help="Variables as a JSON object."),
    context_file: Path | None = typer.Option(
        None, "--context-file", dir_okay=False, help="A file holding the JSON object."
    ),
    locale: str | None = typer.Option(None, "--locale", help="e.g. fr-CA; falls back to fr."),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: the newest."),
) -> None:
    """Print a template rendered with a context, as a message would carry it; sends nothing."""
    variables = parse_context(context, context_file)
    template, rendered = (
        state(ctx).client().render_template(name, variables, locale=locale, version=version)
    )
    typer.echo(f"# {_label(template)}")
    typer.echo(f"Subject: {rendered.subject}")
    typer.echo(f"\n# text\n{rendered.text.rstrip()}")
    if rendered.html is not None:
        typer.echo(f"\n# html\n{rendered.html.rstrip()}")

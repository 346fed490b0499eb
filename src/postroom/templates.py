"""Versioned email templates: stored rows, locale fallback, sandboxed rendering, text from HTML."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import Template as JinjaTemplate
from jinja2 import TemplateSyntaxError
from sqlalchemy import Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from postroom.db import Base, UTCDateTime, new_id, utcnow
from postroom.errors import TemplateError, TemplateNotFound
from postroom.html_text import html_to_text
from postroom.sandbox import (
    FILENAME_PREFIX,
    LimitedEnvironment,
    LimitExceeded,
    RenderLimits,
    limited,
    render_limited,
)

PARTS = ("subject", "text", "html")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
# Everything str.splitlines() breaks on: a subject is one header line.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_STYLESHEETS = re.compile(r"<(?:style|link)\b", re.IGNORECASE)
_FILE_PARTS = {".subject": "subject", ".txt": "text", ".html": "html"}
_CACHE_SIZE = 512


class Template(Base):
    """One version of a named template in one locale (``""`` is the default variant)."""

    __tablename__ = "postroom_templates"
    __table_args__ = (
        # Its index also serves "latest version of (name, locale)": ORDER BY version DESC LIMIT 1
        # walks it backwards, so a second index on (name, locale) would only slow writes.
        UniqueConstraint("name", "locale", "version", name="uq_postroom_templates_version"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    locale: Mapped[str] = mapped_column(String(35), default="")
    version: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class _PartError(TemplateError):
    """A syntax error in one part; ``sync_folder`` uses ``part`` to name the file."""

    def __init__(self, detail: str, *, part: str, template: str, version: int, line: int) -> None:
        super().__init__(detail, template=template, version=version, line=line)
        self.part = part


def normalize_locale(locale: str) -> str:
    """The canonical BCP 47 spelling of ``locale`` (``fr_ca`` → ``fr-CA``); ``""`` stays ``""``."""
    if not locale:
        return ""
    if len(locale) > 35 or not _LOCALE.fullmatch(locale):
        raise TemplateError(f"{locale!r} is not a locale such as 'fr' or 'fr-CA'", field="locale")
    language, *subtags = re.split("[-_]", locale)
    canonical = [language.lower()]
    for tag in subtags:
        if len(tag) == 2 and tag.isalpha():
            canonical.append(tag.upper())  # region: CA
        elif len(tag) == 4 and tag.isalpha():
            canonical.append(tag.title())  # script: Latn
        else:
            canonical.append(tag.lower())
    return "-".join(canonical)


def locale_chain(locale: str | None) -> list[str]:
    """The locales to try for ``locale``, most specific first: ``fr-CA``, ``fr``, ``""``."""
    tags = normalize_locale(locale or "").split("-") if locale else []
    return ["-".join(tags[:end]) for end in range(len(tags), 0, -1)] + [""]


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise TemplateError(
            f"{name!r} is not a template name: lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 100 characters",
            field="name",
        )


def _latest(session: Session, name: str, locale: str) -> Template | None:
    query = (
        select(Template)
        .where(Template.name == name, Template.locale == locale)
        .order_by(Template.version.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def save_template(
    session: Session,
    name: str,
    *,
    subject: str,
    text: str | None = None,
    html: str | None = None,
    locale: str = "",
) -> Template:
    """Store a new version of ``name`` in ``locale``; the latest one if nothing changed."""
    return _save(session, name, subject=subject, text=text, html=html, locale=locale)[0]


def _save(
    session: Session, name: str, *, subject: str, text: str | None, html: str | None, locale: str
) -> tuple[Template, bool]:
    _check_name(name)
    locale = normalize_locale(locale)
    subject, text, html = subject.strip(), text or None, html or None
    if not subject:
        raise TemplateError("a template needs a subject", field="subject", template=name)
    if text is None and html is None:
        raise TemplateError("a template needs a text or an HTML part", template=name)
    latest = _latest(session, name, locale)
    if latest is not None and (latest.subject, latest.text, latest.html) == (subject, text, html):
        return latest, False  # syncing the same content again is a no-op
    version = 1 if latest is None else latest.version + 1
    sources = {"subject": subject, "text": text, "html": html}
    environments = _syntax_environments()
    for part, source in sources.items():
        if source is not None:
            _compile(environments[part], source, name=name, version=version, part=part)
    template = Template(
        id=new_id(),
        name=name,
        locale=locale,
        version=version,
        subject=subject,
        text=text,
        html=html,
        created_at=utcnow(),
    )
    session.add(template)
    session.flush()
    return template, True


def get_template(
    session: Session, name: str, *, locale: str | None = None, version: int | None = None
) -> Template:
    """The latest version (or ``version``) of ``name``: tries ``fr-CA``, ``fr``, then ``""``."""
    for candidate in locale_chain(locale):
        query = select(Template).where(Template.name == name, Template.locale == candidate)
        if version is None:
            query = query.order_by(Template.version.desc()).limit(1)
        else:
            query = query.where(Template.version == version)
        found = session.scalars(query).first()
        if found is not None:
            return found
    raise TemplateNotFound(name, locale=locale, version=version)


def list_templates(session: Session) -> list[Template]:
    """The latest version of every (name, locale), by name then locale."""
    latest = (
        select(Template.name, Template.locale, func.max(Template.version).label("version"))
        .group_by(Template.name, Template.locale)
        .subquery()
    )
    query = (
        select(Template)
        .join(
            latest,
            (Template.name == latest.c.name)
            & (Template.locale == latest.c.locale)
            & (Template.version == latest.c.version),
        )
        .order_by(Template.name, Template.locale)
    )
    return list(session.scalars(query))


def list_versions(session: Session, name: str, locale: str = "") -> list[Template]:
    """Every version of ``name`` in exactly ``locale``, oldest first."""
    query = (
        select(Template)
        .where(Template.name == name, Template.locale == normalize_locale(locale))
        .order_by(Template.version)
    )
    return list(session.scalars(query))


def _filename(name: str, version: int, part: str) -> str:
    return f"{FILENAME_PREFIX}{name} v{version} {part}>"


def _compile(
    environment: LimitedEnvironment, source: str, *, name: str, version: int, part: str
) -> JinjaTemplate:
    try:
        code = environment.compile(source, name=name, filename=_filename(name, version, part))
    except TemplateSyntaxError as exc:
        raise _PartError(
            f"{name} v{version} {part}, line {exc.lineno}: {exc.message}",
            part=part,
            template=name,
            version=version,
            line=exc.lineno,
        ) from None
    return environment.template_class.from_code(environment, code, environment.make_globals(None))


def _environments(limits: RenderLimits) -> dict[str, LimitedEnvironment]:
    # Autoescape only where the output is HTML: escaping a subject or a text part would show
    # "&amp;" to the reader.
    plain = LimitedEnvironment(limits, autoescape=False)
    return {"subject": plain, "text": plain, "html": LimitedEnvironment(limits, autoescape=True)}


@cache
def _syntax_environments() -> dict[str, LimitedEnvironment]:
    """Environments used only to check syntax when a template is saved."""
    return _environments(RenderLimits())


@dataclass(frozen=True)
class Rendered:
    """A template rendered for one message."""

    subject: str
    text: str
    html: str | None


@dataclass(frozen=True)
class _Compiled:
    subject: JinjaTemplate
    text: JinjaTemplate | None
    html: JinjaTemplate | None


class TemplateRenderer:
    """Renders templates in the sandbox, within the limits; build one per process and share it."""

    def __init__(
        self,
        *,
        max_output_chars: int = 1_000_000,
        max_seconds: float = 2.0,
        max_range: int = 10_000,
    ) -> None:
        self.limits = RenderLimits(
            max_output_chars=max_output_chars,
            max_seconds=max_seconds,
            max_range=max_range,
            max_range_total=max(10 * max_range, RenderLimits.max_range_total),
        )
        self._environments = _environments(self.limits)
        # Never fetch a <link>ed or @imported stylesheet: that would let a template author
        # make the worker read local files or reach internal URLs.
        self._inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, template: Template, context: Mapping[str, Any]) -> Rendered:
        """Render every part; any failure is a TemplateError naming the template, version, line."""
        compiled = self._compiled(template)
        with limited(self.limits):
            subject = self._run(template, "subject", compiled.subject, context)
            text = html = None
            if compiled.text is not None:
                text = self._run(template, "text", compiled.text, context)
            if compiled.html is not None:
                html = self._run(template, "html", compiled.html, context)
        subject = subject.strip()
        if _LINE_BREAKS.search(subject):
            raise _error(template, "subject", None, "the rendered subject contains a line break")
        if html is not None:
            text = html_to_text(html) if text is None else text
            html = self._inline_css(template, html)
        return Rendered(subject=subject, text=text or "", html=html)

    def _run(
        self, template: Template, part: str, compiled: JinjaTemplate, context: Mapping[str, Any]
    ) -> str:
        try:
            return render_limited(compiled, context, self.limits.max_output_chars)
        except Exception as exc:
            # Whatever went wrong inside (an undefined name, a TypeError, a sandbox refusal, a
            # limit) is the template's fault, and must never take the worker down with it.
            raise _error(template, part, _line_of(exc, compiled.filename), _reason(exc)) from exc

    def _compiled(self, template: Template) -> _Compiled:
        # Rows never change once saved (a change is a new version), so the id is a safe key.
        key = template.id
        with self._lock:
            found = self._cache.get(key) if key else None
            if found is not None:
                self._cache.move_to_end(key)
                return found
        parts = {
            part: _compile(self._environments[part], source, **_where(template, part))
            for part in PARTS
            if (source := getattr(template, part))
        }
        compiled = _Compiled(parts["subject"], parts.get("text"), parts.get("html"))
        if key:
            with self._lock:
                self._cache[key] = compiled
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return compiled

    def _inline_css(self, template: Template, html: str) -> str:
        if not _STYLESHEETS.search(html):
            return html  # nothing to inline; leave fragments as they are
        try:
            return self._inliner.inline(html)
        except (css_inline.InlineError, ValueError) as exc:
            raise _error(template, "html", None, f"CSS could not be inlined: {exc}") from exc


def _where(template: Template, part: str) -> dict[str, Any]:
    return {"name": template.name, "version": template.version, "part": part}


def _error(template: Template, part: str, line: int | None, reason: str) -> TemplateError:
    at = f", line {line}" if line is not None else ""
    return TemplateError(
        f"{template.name} v{template.version} {part}{at}: {reason}",
        template=template.name,
        version=template.version,
        line=line,
    )


def _line_of(exc: BaseException, filename: str | None) -> int | None:
    """The innermost template line in ``exc``'s traceback (Jinja rewrites it to source lines)."""
    line = None
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == filename:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        reason = "calls nested too deeply"
    elif isinstance(exc, LimitExceeded | TemplateError) or type(exc).__module__.startswith(
        "jinja2"
    ):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def sync_folder(session: Session, directory: Path) -> list[Template]:
    """Save ``<name>[.<locale>].subject|.txt|.html`` files; returns the templates that changed."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        part = _FILE_PARTS.get(path.suffix)
        if part is None or not path.is_file() or path.name.startswith("."):
            continue  # READMEs, editor files and folders live here too
        name, _, locale = path.name.removesuffix(path.suffix).partition(".")
        try:
            _check_name(name)
            locale = normalize_locale(locale)
        except TemplateError as exc:
            raise TemplateError(f"{path.name}: {exc.detail}", template=name) from None
        groups.setdefault((name, locale), {})[part] = path
    saved = []
    for (name, locale), paths in groups.items():
        if "subject" not in paths:
            first = next(iter(paths.values()))
            subject = first.name.removesuffix(first.suffix) + ".subject"
            raise TemplateError(f"{first.name}: no {subject} next to it", template=name)
        sources = {part: _read(path) for part, path in paths.items()}
        try:
            template, created = _save(
                session,
                name,
                subject=sources["subject"],
                text=sources.get("text"),
                html=sources.get("html"),
                locale=locale,
            )
        except TemplateError as exc:
            path = paths[exc.part if isinstance(exc, _PartError) else "subject"]
            raise TemplateError(
                f"{path.name}: {exc.detail}", template=name, version=exc.version, line=exc.line
            ) from None
        if created:
            saved.append(template)
    return saved


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise TemplateError(f"{path.name}: cannot be read as UTF-8 text ({exc})") from None

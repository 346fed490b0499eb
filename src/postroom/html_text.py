"""Plain text from HTML, for the text/plain part every HTML email should carry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

_SKIPPED = frozenset({"head", "script", "style", "template", "title"})
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "hr", "dl"}
)
_LINES = frozenset(
    {
        "address", "article", "aside", "dd", "div", "dt", "fieldset", "figcaption", "figure",
        "footer", "form", "header", "li", "main", "nav", "section", "tr",
    }
)  # fmt: skip


# line breaks owed at a block's start and end (a list item's start writes its own)
_BREAKS_AT_START = {tag: 2 for tag in _PARAGRAPHS} | {tag: 1 for tag in _LINES - {"li"}}
_BREAKS_AT_END = {tag: 2 for tag in _PARAGRAPHS} | {tag: 1 for tag in _LINES}
_BLANK_LINES = re.compile(r"\n{3,}")


# One token of HTML, as tolerant as html.parser: text; a comment, marked section, declaration
# or processing instruction (skipped); an end tag; a start tag; markup that never closes (text
# up to the next ">"); or a "<" that starts none of these.
_TOKEN = re.compile(
    r"""
      (?P<text>[^<]+)
    | <!--.*?--\s*>
    | <!\[.*?\]\s*\]\s*>
    | <!(?!--|\[)[^>]*>
    | <\?[^>]*>
    | </(?P<end>[a-zA-Z][^\t\n\r\f\x20/>\x00]*)[^>]*>
    | </[^>]*>
    | <(?P<start>[a-zA-Z][^\t\n\r\f\x20/>\x00]*)(?P<attrs>(?:=+\s*"[^"]*"|=+\s*'[^']*'|[^>])*)>
    | (?P<broken><[a-zA-Z/!?](?:[^>]*>|[^<]*))
    | (?P<lt><)
    """,
    re.DOTALL | re.VERBOSE,
)
_ATTRIBUTE = re.compile(r"""([^\s/>=][^\s/=>]*)(?:\s*=+\s*("[^"]*"|'[^']*'|[^\s>]*))?""")
# Their content is raw text up to the matching end tag, never markup.
_RAW_TEXT_END = {
    "script": re.compile(r"</\s*script\s*>", re.IGNORECASE),
    "style": re.compile(r"</\s*style\s*>", re.IGNORECASE),
}


def _attribute(source: str, wanted: str) -> str | None:
    """The value of attribute ``wanted`` (lower-case) in a start tag's ``source``; the last wins."""
    value: str | None = None
    if "=" not in source:  # names alone carry no value
        return None
    for attribute in _ATTRIBUTE.finditer(source):
        name, raw = attribute.groups()
        if name.lower() == wanted:
            if raw is not None and raw[:1] in ("'", '"'):
                raw = raw[1:-1]
            value = None if raw is None else unescape(raw)
    return value


def _emit(out: list[str], text: str, breaks: int, space: bool) -> None:
    """Add ``text`` after the line breaks or the space owed before it."""
    if breaks and out:
        out.append("\n" * breaks)
    elif space and out and not out[-1].endswith(("\n", " ")):
        out.append(" ")
    out.append(text)


def _data(out: list[str], data: str, breaks: int, space: bool, pre: int) -> tuple[int, bool]:
    """Add text content: as is inside <pre>, else its words; returns what is owed after it."""
    if pre:
        _emit(out, data, breaks, space)
        return 0, False
    words = data.split()
    if words:
        _emit(out, " ".join(words), breaks, space or data[0].isspace())
        breaks = 0
    return breaks, data[-1:].isspace()


# What the loop reads a token's kind by: the number of the last group it matched (a start
# tag's is its attributes), None for what is skipped. Comparing integers cost less than names.
_TEXT = _TOKEN.groupindex["text"]
_END = _TOKEN.groupindex["end"]
_START = _TOKEN.groupindex["start"]
_ATTRS = _TOKEN.groupindex["attrs"]
_BROKEN = _TOKEN.groupindex["broken"]
assert _BROKEN < _TOKEN.groupindex["lt"] == _TOKEN.groups  # text-like kinds: _TEXT, >= _BROKEN

# What a tag does, by its lower-case name, as one number the loop compares: 1 and 2 are the
# line breaks a block owes (at its start for a start tag, at its end for an end tag), and the
# rest name a rule. Any other tag (b, span, strong, html, body, ...) adds nothing to the text.
_SKIP, _RAW, _BR, _LIST, _ITEM, _CELL, _LINK, _IMAGE, _PRE = range(3, 12)
_START_RULES = (
    dict.fromkeys(_SKIPPED, _SKIP)
    | dict.fromkeys(_RAW_TEXT_END, _RAW)
    | _BREAKS_AT_START
    | {"br": _BR, "ul": _LIST, "ol": _LIST, "li": _ITEM, "td": _CELL, "th": _CELL}
    | {"a": _LINK, "img": _IMAGE, "pre": _PRE}
)
_END_RULES = (
    dict.fromkeys(_SKIPPED, _SKIP)
    | _BREAKS_AT_END
    | {"ul": _LIST, "ol": _LIST, "a": _LINK, "pre": _PRE}
)
assert _BREAKS_AT_START["pre"] == _BREAKS_AT_END["pre"] == 2  # what _PRE owes, both ends
_OWED = ("", "\n", "\n\n")  # the text of 0, 1 or 2 owed line breaks
# The common link, ``<a href="...">`` and nothing else: its value without reading attributes.
_HREF_ALONE = re.compile(r"""\s+href\s*=\s*(?:"([^"&]*)"|'([^'&]*)')\s*""", re.IGNORECASE)


def html_to_text(html: str) -> str:  # noqa: C901 (one loop on purpose: see below)
    """A plain-text rendering of ``html`` for the text/plain part of an email.

    Blocks become line breaks (paragraphs and headings a blank line), list items get a "- "
    indented by nesting, table cells a space, links keep their address after their text,
    images their alt text; head, script, style, template and title are left out. One loop
    over the tokens with the state in local variables, and each tag's rule one dictionary
    lookup away: function calls and string comparisons per token made this most of
    ``send()``'s own time for an HTML email.
    """
    out: list[str] = []
    breaks = 0  # line breaks owed before the next text
    space = False  # a space is owed before the next text on the same line
    skip = pre = lists = 0  # open skipped elements, <pre> elements and lists
    links: list[tuple[str, int]] = []  # open links: the href, and where their text starts
    tokens: Iterator[re.Match[str]] | None = _TOKEN.finditer(html)
    while tokens is not None:  # once, and again after each script or style element
        current, tokens = tokens, None
        for token in current:
            kind = token.lastindex
            if kind is None:
                continue
            if kind == _TEXT or kind >= _BROKEN:  # text, or markup read as text
                if skip:
                    continue
                data = token[0]
                if "&" in data:
                    data = unescape(data)
                if pre:
                    _emit(out, data, breaks, space)
                    breaks, space = 0, False
                    continue
                words = data.split()
                if words:
                    if out:
                        if breaks:
                            out.append(_OWED[breaks])
                        elif (space or data[0].isspace()) and out[-1][-1:] not in ("\n", " "):
                            out.append(" ")
                    out.append(" ".join(words))
                    breaks = 0
                space = data[-1:].isspace()
                continue
            if kind == _END:
                rule = _END_RULES.get(token[_END].lower())
                if rule is None:
                    continue
            else:  # a start tag
                tag = token[_START].lower()
                rule = _START_RULES.get(tag)
                if rule is None:
                    continue
                attrs = token[_ATTRS]
                if rule in (_SKIP, _RAW):
                    skip += 1
                elif skip:
                    pass  # inside a skipped element nothing else counts, closed or not
                elif rule == _ITEM:
                    if out:
                        out.append(_OWED[max(breaks, 1)])  # an item starts a line at least
                    out.append("- " if lists < 2 else "  " * (lists - 1) + "- ")
                    breaks, space = 0, False
                elif rule == _LINK:
                    alone = _HREF_ALONE.fullmatch(attrs)
                    if alone is not None:
                        href = alone[1] if alone[1] is not None else alone[2]
                    else:
                        href = _attribute(attrs, "href") or ""
                    links.append((href, len(out)))
                elif rule <= 2:
                    if rule > breaks:
                        breaks = rule
                elif rule == _LIST:
                    lists += 1
                    breaks = max(breaks, 1 if lists > 1 else 2)
                elif rule == _BR:
                    _emit(out, "\n", breaks, space)
                    breaks, space = 0, False
                elif rule == _CELL:
                    space = True
                elif rule == _IMAGE:
                    if alt := _attribute(attrs, "alt"):
                        breaks, space = _data(out, alt, breaks, space, pre)
                elif rule == _PRE:
                    breaks = 2
                    pre += 1
                if attrs.endswith("/"):  # written as closed: its end tag's rule follows
                    rule = _END_RULES.get(tag)
                    if rule is None:
                        continue
                elif rule == _RAW:
                    # its content is skipped (script and style are): read on after its end tag,
                    # which closes it again; without one, the rest of the document is its content
                    end = _RAW_TEXT_END[tag].search(html, token.end())
                    if end is not None:
                        skip -= 1
                        tokens = _TOKEN.finditer(html, end.end())
                    break
                else:
                    continue
            # an end tag's rule
            if rule == _SKIP:
                if skip:
                    skip -= 1
            elif skip:
                continue
            elif rule <= 2:
                if rule > breaks:
                    breaks = rule
            elif rule == _LINK:
                if links:
                    href, start = links.pop()
                    if href and not href.startswith(("#", "javascript:")):
                        shown = href.removeprefix("mailto:")
                        text = "".join(out[start:]).strip()
                        if not text:
                            _emit(out, shown, breaks, space)
                            breaks, space = 0, False
                        elif text != href and text != shown:
                            out.append(f" ({shown})")
            elif rule == _LIST:
                if lists:
                    lists -= 1
                breaks = max(breaks, 2 if not lists else 1)
            elif rule == _PRE:
                breaks = 2
                if pre:
                    pre -= 1
    lines = [line.rstrip() for line in "".join(out).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()

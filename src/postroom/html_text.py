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
# Tags with a rule; any other tag (b, span, strong, html, body, ...) adds nothing to the text,
# and a start tag's rules cover every end tag's, so the loop passes over the rest at once.
_RULED_END = _SKIPPED | _BREAKS_AT_END.keys() | {"a", "ul", "ol", "pre"}
_RULED_START = _RULED_END | _BREAKS_AT_START.keys() | {"br", "li", "td", "th", "img"}


def html_to_text(html: str) -> str:  # noqa: C901 (one loop on purpose: see below)
    """A plain-text rendering of ``html`` for the text/plain part of an email.

    Blocks become line breaks (paragraphs and headings a blank line), list items get a "- "
    indented by nesting, table cells a space, links keep their address after their text,
    images their alt text; head, script, style, template and title are left out. One loop
    over the tokens with the state in local variables: method calls per token made this
    most of ``send()``'s own time for an HTML email.
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
                data = token.group()
                if "&" in data:
                    data = unescape(data)
                if pre:
                    _emit(out, data, breaks, space)
                    breaks, space = 0, False
                    continue
                words = data.split()
                if words:
                    if breaks and out:
                        out.append("\n" * breaks)
                    elif (space or data[0].isspace()) and out and out[-1][-1:] not in ("\n", " "):
                        out.append(" ")
                    out.append(" ".join(words))
                    breaks = 0
                space = data[-1:].isspace()
                continue
            closing: str | None = None  # the end tag this token closes
            if kind == _END:
                closing = token[_END].lower()
                if closing not in _RULED_END:
                    continue
            else:  # a start tag
                tag = token[_START].lower()
                if tag not in _RULED_START:
                    continue
                attrs = token[_ATTRS]
                if tag in _SKIPPED:
                    skip += 1
                elif not skip:
                    if tag == "br":
                        _emit(out, "\n", breaks, space)
                        breaks, space = 0, False
                    elif tag == "ul" or tag == "ol":
                        lists += 1
                        breaks = max(breaks, 1 if lists > 1 else 2)
                    elif tag == "li":
                        _emit(out, "  " * max(lists - 1, 0) + "- ", max(breaks, 1), space)
                        breaks, space = 0, False
                    elif tag == "td" or tag == "th":
                        space = True
                    elif tag == "a":
                        links.append((_attribute(attrs, "href") or "", len(out)))
                    elif tag == "img" and (alt := _attribute(attrs, "alt")):
                        breaks, space = _data(out, alt, breaks, space, pre)
                    if (count := _BREAKS_AT_START.get(tag, 0)) > breaks:
                        breaks = count
                    if tag == "pre":
                        pre += 1
                if attrs.endswith("/"):
                    closing = tag
                elif tag in _RAW_TEXT_END:
                    # its content is skipped (script and style are): read on after its end tag,
                    # which closes it again; without one, the rest of the document is its content
                    end = _RAW_TEXT_END[tag].search(html, token.end())
                    if end is not None:
                        skip -= 1
                        tokens = _TOKEN.finditer(html, end.end())
                    break
                else:
                    continue
            if closing in _SKIPPED:
                skip = max(skip - 1, 0)
            elif not skip:
                if closing == "a" and links:
                    href, start = links.pop()
                    if href and not href.startswith(("#", "javascript:")):
                        shown = href.removeprefix("mailto:")
                        text = "".join(out[start:]).strip()
                        if not text:
                            _emit(out, shown, breaks, space)
                            breaks, space = 0, False
                        elif text != href and text != shown:
                            out.append(f" ({shown})")
                elif closing == "ul" or closing == "ol":
                    lists = max(lists - 1, 0)
                    breaks = max(breaks, 2 if not lists else 1)
                if (count := _BREAKS_AT_END.get(closing, 0)) > breaks:
                    breaks = count
                if closing == "pre":
                    pre = max(pre - 1, 0)
    lines = [line.rstrip() for line in "".join(out).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()

"""Plain text from HTML, for the text/plain part every HTML email should carry."""

from __future__ import annotations

import re
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


_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor:
    """Collects readable text: blocks become line breaks, links keep their address.

    Driven by ``_feed`` with the events ``html.parser.HTMLParser`` would report: tag names
    and attribute names lower-cased, character references in text and values resolved.
    """

    def __init__(self) -> None:
        self.out: list[str] = []
        self._breaks = 0  # line breaks owed before the next text
        self._space = False  # a space is owed before the next text on the same line
        self._skip = 0
        self._pre = 0
        self._lists = 0
        self._links: list[tuple[str, int]] = []

    def _break(self, count: int) -> None:
        self._breaks = max(self._breaks, count)

    def _emit(self, text: str) -> None:
        if self._breaks and self.out:
            self.out.append("\n" * self._breaks)
            self._space = False
        elif self._space and self.out and not self.out[-1].endswith(("\n", " ")):
            self.out.append(" ")
        self._breaks, self._space = 0, False
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip += 1
        elif self._skip:
            return
        elif tag == "br":
            self._emit("\n")
        elif tag in ("ul", "ol"):
            self._lists += 1
            self._break(1 if self._lists > 1 else 2)
        elif tag == "li":
            self._break(1)
            self._emit("  " * max(self._lists - 1, 0) + "- ")
        elif tag in ("td", "th"):
            self._space = True
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.out)))
        elif tag == "img" and (alt := dict(attrs).get("alt")):
            self.handle_data(alt)
        if tag in _PARAGRAPHS or (tag in _LINES and tag != "li"):
            self._break(2 if tag in _PARAGRAPHS else 1)
        if tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip = max(self._skip - 1, 0)
        elif self._skip:
            return
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            self._end_link(href, "".join(self.out[start:]).strip())
        elif tag in ("ul", "ol"):
            self._lists = max(self._lists - 1, 0)
            self._break(2 if not self._lists else 1)
        if tag in _PARAGRAPHS or tag in _LINES:
            self._break(2 if tag in _PARAGRAPHS else 1)
        if tag == "pre":
            self._pre = max(self._pre - 1, 0)

    def _end_link(self, href: str, text: str) -> None:
        if not href or href.startswith(("#", "javascript:")):
            return
        shown = href.removeprefix("mailto:")
        if not text:
            self._emit(shown)
        elif text not in (href, shown):
            self.out.append(f" ({shown})")

    def text(self) -> str:
        """What was collected, with trailing spaces and runs of blank lines removed."""
        lines = [line.rstrip() for line in "".join(self.out).split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self._emit(data)
            return
        words = data.split()
        if data[:1].isspace():
            self._space = True
        if words:
            self._emit(" ".join(words))
        self._space = data[-1:].isspace()


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


def _attributes(source: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for attribute in _ATTRIBUTE.finditer(source):
        name, value = attribute.groups()
        if value is not None and value[:1] in ("'", '"'):
            value = value[1:-1]
        found.append((name.lower(), None if value is None else unescape(value)))
    return found


def _feed(extractor: _TextExtractor, html: str) -> None:
    """Tokenize ``html`` and report each token to ``extractor``."""
    position, length = 0, len(html)
    match = _TOKEN.match
    while position < length:
        token = match(html, position)
        assert token is not None  # the last alternative matches any "<"
        position = token.end()
        kind = token.lastgroup  # None for what is skipped
        if kind == "text":
            text = token.group()
            extractor.handle_data(unescape(text) if "&" in text else text)
        elif kind == "attrs":  # a start tag
            tag, attrs = token["start"].lower(), token["attrs"]
            extractor.handle_starttag(tag, _attributes(attrs) if "=" in attrs else [])
            if attrs.endswith("/"):
                extractor.handle_endtag(tag)
            elif tag in _RAW_TEXT_END:
                closing = _RAW_TEXT_END[tag].search(html, position)
                end = closing.start() if closing else length
                if end > position:
                    extractor.handle_data(html[position:end])
                if closing:
                    extractor.handle_endtag(tag)
                position = closing.end() if closing else length
        elif kind == "end":
            extractor.handle_endtag(token["end"].lower())
        elif kind is not None:  # "broken" markup, or a lone "<": text
            extractor.handle_data(unescape(token.group()))


def html_to_text(html: str) -> str:
    """A plain-text rendering of ``html`` for the text/plain part of an email."""
    extractor = _TextExtractor()
    _feed(extractor, html)
    return extractor.text()

"""The text extractor html_to_text used to be, driven by ``html.parser``: the reference.

``postroom.html_text`` folds these rules into one loop over its own tokens, for speed; this
class states them one event at a time, and the tests hold the two to the same text.
"""

from __future__ import annotations

from html.parser import HTMLParser

from postroom.html_text import _BLANK_LINES, _LINES, _PARAGRAPHS, _SKIPPED


class TextExtractor:
    """Collects readable text: blocks become line breaks, links keep their address.

    Fed the events ``html.parser.HTMLParser`` reports: tag names and attribute names
    lower-cased, character references in text and values resolved.
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


class ReferenceParser(HTMLParser):
    """The standard library's tokenizer, driving the extractor."""

    def __init__(self, extractor: TextExtractor) -> None:
        super().__init__(convert_charrefs=True)
        self.extractor = extractor

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.extractor.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.extractor.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        self.extractor.handle_data(data)


def reference_text(html: str) -> str:
    """The text the reference rules give for ``html``."""
    extractor = TextExtractor()
    parser = ReferenceParser(extractor)
    parser.feed(html)
    parser.close()
    return extractor.text()

"""html_to_text against its reference: the rules one event at a time, fed by ``html.parser``.

html_to_text has its own tokenizer and folds the rules into one loop, for speed (it was most
of ``send()``'s CPU for an HTML email); fed the same markup, both must give the same text.
"""

from __future__ import annotations

import random

import pytest

from postroom.html_text import html_to_text
from tests.html_text_reference import reference_text

FRAGMENTS = [
    "<p>", "</p>", "<br>", "<br/>", "<BR />", "<div class='a'>", "</div>", "</DIV >",
    '<a href="https://x.test/?a=1&amp;b=2">', "<a href='mailto:m@x.test'>", "<a href=#top>",
    "</a>", '<A HREF="HTTPS://Y.TEST">', '<a title="x>y" href="z">', "<a href>", '<a href="">',
    "<a href = 'sp.test' >", '<a\nhref="nl.test">', '<a href="one.test" href="two.test">',
    '<a href="self.test"/>', "<a href=bare.test>", '<a href=="eq.test">',
    '<img alt="Logo &amp; co" src=x>', "<img src=y>", "<img alt=bare/>", "<ul>", "</ul>",
    "<ol>", "</ol>", "<li>", "</li>", "<table>", "<tr>", "<td>", "<td >", "</td>", "<th>",
    "</tr>", "</table>", "<pre>", "</pre>", "<h1>", "</h1>", "<b>", "</b>", "<p/>",
    "<span\nclass=x>", "</SPAN>", "</p\n>", "<script>if (a<b) { x = '</div>' }</script>",
    "<SCRIPT type=x>1</script >", "<style>p{color:red}</style>", "<title>T</title>",
    "<head>", "</head>", "<template><p>t</p></template>", "<!-- c -->",
    "<!-- <p>not</p> -->", "<!DOCTYPE html>", "<?xml version='1.0'?>", "<![CDATA[x]]>",
    "</ >", "</>", "</3>", "<3", "a < b", "x>y", " & ", "&amp;", "&nbsp;", "&euro;", "&#169;",
    "&#x41;", "&bogus;", "&amp", "Hello", "  world  ", "\n", "\t", " ", "Ünïcödé",
    "text with  double  spaces", "<!--", "-->", "<b", '"', "'", ">", "=", "<a", "</", "<!",
    "<blockquote>", "</blockquote>", "<hr>", "<dl><dt>t<dd>d</dl>", "&#1;", "x&#1;",
]  # fmt: skip


def generated_corpus(count: int) -> list[str]:
    chooser = random.Random(20261203)
    return ["".join(chooser.choices(FRAGMENTS, k=chooser.randint(1, 40))) for _ in range(count)]


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_each_fragment_alone_gives_the_same_text_as_html_parser(fragment):
    html = f"<p>before {fragment} after</p>"
    assert html_to_text(html) == reference_text(html)


def test_generated_markup_gives_the_same_text_as_html_parser():
    mismatches = [
        html for html in generated_corpus(10_000) if html_to_text(html) != reference_text(html)
    ]
    assert mismatches[:3] == []


def test_an_unterminated_tag_or_comment_at_the_end_is_kept_as_text_or_dropped_alike():
    endings = ["<b", '<a href="x', "<!-- never closed", "<!DOCTYPE", "</b", "</", "<script>x"]
    for html in (f"<p>a {ending}" for ending in endings):
        assert html_to_text(html) == reference_text(html)

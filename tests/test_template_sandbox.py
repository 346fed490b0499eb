"""The attack corpus: every template here must fail cleanly and leave the process serving."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from jinja2.sandbox import unsafe

from postroom.errors import TemplateError
from postroom.templates import Template, TemplateRenderer


class Sentinel:
    """A context object whose privileged methods record that they ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _secret(self) -> str:
        self.calls.append("_secret")
        return "secret"

    def delete(self) -> None:
        self.calls.append("delete")

    delete.alters_data = True  # type: ignore[attr-defined]  # Django's convention

    @unsafe
    def drop(self) -> None:
        self.calls.append("drop")

    def __str__(self) -> str:
        return "sentinel"


LOOP, END = "{% for i in range(40) %}", "{% endfor %}"
BIG = "{% set big = 'x' * 900000 %}"
# (id, template source): each must raise TemplateError without running the sentinel's methods.
CORPUS = [
    ("subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ("cycler-globals", "{{ cycler.__init__.__globals__ }}"),
    ("template-context", "{{ self._TemplateReference__context }}"),
    ("request-style-globals", "{{ request.application.__globals__ }}"),
    ("format-globals", "{{ ''.format.__globals__ }}"),
    ("format-field-walk", "{{ '{0.__class__}'.format('') }}"),
    ("format-private-attr", "{{ '{0._secret}'.format(obj) }}"),
    ("percent-walk", "{{ '%s' % ''.__class__.__mro__ }}"),
    ("attr-filter", "{{ ''|attr('__class__') }}"),
    ("attr-filter-format", "{{ ('{0.__class__}'|attr('format'))('') }}"),
    ("private-method", "{{ obj._secret() }}"),
    ("alters-data", "{{ obj.delete() }}"),
    ("unsafe-callable", "{{ obj.drop() }}"),
    ("huge-range", "{{ range(10**9)|list }}"),
    ("empty-huge-loop", "{% for i in range(10**9) %}{% endfor %}"),
    ("nested-ranges", "{% for i in range(10000) %}{% for j in range(10000) %}" + END * 2),
    ("nested-string-loops", "{% set s = 'ab' * 5000 %}{% for a in s %}{% for b in s %}" + END * 2),
    ("string-times", "{{ 'a' * 10**10 }}"),
    ("list-times", "{{ [[1] * 1000] * 10**6 }}"),
    ("center", "{{ 'a'|center(10**9) }}"),
    ("power", "{{ 10 ** (10 ** 10) }}"),
    ("squaring", "{% set ns = namespace(x=7) %}" + LOOP + "{% set ns.x = ns.x * ns.x %}" + END),
    ("recursive-macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
    (
        "fanout-macro",
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    ),
    ("recursive-loop", "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}"),
    ("huge-join", "{{ range(10000)|join('x' * 100000) }}"),
    ("str-join", "{{ ('x' * 100000).join(range(10000)|map('string')) }}"),
    ("printf-width", "{{ '%*s' % (10**9, 'x') }}"),
    ("printf-precision", "{{ '%.999999999f' % 1.5 }}"),
    ("printf-repeat", "{{ ('%(a)s' * 1000) % {'a': 'x' * 10000} }}"),
    ("format-width", "{{ '{:>1000000000}'.format(1) }}"),
    ("format-nested-width", "{{ '{:>{w}}'.format(1, w=10**9) }}"),
    ("format-filter", "{{ '%0999999999d'|format(1) }}"),
    (
        "concat-doubling",
        "{% set ns = namespace(s='ab') %}" + LOOP + "{% set ns.s = ns.s ~ ns.s %}" + END,
    ),
    (
        "plus-doubling",
        "{% set ns = namespace(s='ab') %}" + LOOP + "{% set ns.s = ns.s + ns.s %}" + END,
    ),
    (
        "shared-references",
        "{% set ns = namespace(l=[1]) %}"
        + LOOP
        + "{% set ns.l = [ns.l, ns.l] %}"
        + END
        + "{{ ns.l }}",
    ),
    ("captured-block", BIG + "{% set out %}" + LOOP + "{{ big }}" + END + "{% endset %}"),
    ("output-flood", BIG + LOOP + "{{ big }}" + END),
    (
        "many-medium-strings",
        "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
        "{% set ns.l = ns.l + [('x' * 900000) ~ i] %}" + END,
    ),
    ("expandtabs", "{{ ('\t' * 1000).expandtabs(tabsize=10**6) }}"),
    ("replace", "{{ ('a' * 1000).replace('a', 'b' * 100000) }}"),
    ("ljust", "{{ 'a'.ljust(10**9) }}"),
    ("to-bytes", "{{ (1).to_bytes(10**9, 'big') }}"),
    ("translate", "{{ 'abc'.translate({97: 'x' * 1000}) }}"),
    ("indent", "{{ ('a\n' * 1000)|indent(10**6) }}"),
    ("replace-filter", "{{ ('a' * 1000)|replace('a', 'b' * 100000) }}"),
    ("wordwrap", "{{ ('a ' * 1000)|wordwrap(1, wrapstring='x' * 100000) }}"),
    ("round", "{{ 5|round(-10**9) }}"),
    ("batch-fill", "{{ [1]|batch(10**9, 0)|list }}"),
    ("slice", "{{ [1]|slice(10**9)|list }}"),
    ("quadratic-sum", "{{ [[1] * 1000] * 1000|sum(start=[]) }}"),
    ("lipsum", "{{ lipsum(10**6) }}"),
    ("markup-center", "{{ ('x'|safe).center(10**9) }}"),
    ("const-folded-concat", "{{ 'x'|center(999999) ~ 'x'|center(999999) ~ 'x'|center(999999) }}"),
]


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    # A short deadline keeps the CPU-bound cases quick; the mechanism is the same at 2 s.
    return TemplateRenderer(max_seconds=0.5)


def template(text: str) -> Template:
    return Template(name="attack", locale="", version=1, subject="Hi", text=text)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("source", [source for _, source in CORPUS], ids=[i for i, _ in CORPUS])
def test_attack_fails_cleanly_and_runs_nothing_privileged(renderer, source):
    trace_before = sys.gettrace()
    obj = Sentinel()

    with pytest.raises(TemplateError) as caught:
        renderer.render(template(source), {"obj": obj, "request": {}})

    assert obj.calls == []
    assert caught.value.template == "attack"
    assert caught.value.version == 1
    assert sys.gettrace() is trace_before  # the deadline's tracer is gone again


def test_the_process_keeps_serving_after_the_corpus(renderer):
    for _, source in CORPUS:
        with pytest.raises(TemplateError):
            renderer.render(template(source), {"obj": Sentinel()})

    rendered = renderer.render(
        template("{% for n in names %}{{ loop.index }}. {{ n|title }}\n{% endfor %}"),
        {"names": ["ann", "bob"]},
    )

    assert rendered.text == "1. Ann\n2. Bob\n"


@pytest.mark.timeout(30)
def test_the_cpu_deadline_works_in_any_thread():
    renderer = TemplateRenderer(max_seconds=0.3)
    loops = "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(renderer.render, template(loops), {"s": "x" * 5000}) for _ in range(2)
        ]
        for future in futures:
            with pytest.raises(TemplateError, match="CPU") as caught:
                future.result()
            assert caught.value.line == 1


def test_normal_templates_using_the_checked_operations_still_render():
    source = (
        "{{ '%-6s|%5.2f' % (name, total) }} {{ '{:>4}'.format(n) }} {{ 'ab' * 3 }} "
        "{{ items|join(', ') }} {{ ', '.join(items) }} {{ name|center(9) }} "
        "{{ range(3)|sum }} {{ 2 ** 10 }} {{ 'a-b'.replace('-', '+') }} {{ 1.234|round(1) }}"
    )

    rendered = TemplateRenderer().render(
        template(source), {"name": "Ann", "total": 3.14159, "n": 7, "items": ["x", "y"]}
    )

    assert rendered.text == "Ann   | 3.14    7 ababab x, y x, y    Ann    3 1024 a+b 1.2"

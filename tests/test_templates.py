from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from postroom.db import create_db_engine, create_session_factory
from postroom.errors import MessageRejected, TemplateError, TemplateNotFound
from postroom.html_text import html_to_text
from postroom.templates import (
    Template,
    TemplateRenderer,
    get_template,
    list_templates,
    list_versions,
    locale_chain,
    normalize_locale,
    save_template,
    sync_folder,
)


@pytest.fixture
def db(database_url: str) -> Iterator[Session]:
    engine = create_db_engine(database_url)
    with create_session_factory(engine)() as session:
        yield session
    engine.dispose()


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Session]:
    engine = create_db_engine(sqlite_url)
    with create_session_factory(engine)() as session:
        yield session
    engine.dispose()


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


def unsaved(*, subject="Hi", text=None, html=None, name="welcome", version=1) -> Template:
    return Template(name=name, locale="", version=version, subject=subject, text=text, html=html)


def test_saving_changed_content_creates_a_new_version_each_time(db):
    first = save_template(db, "welcome", subject="Hi {{ name }}", text="Hello {{ name }}")
    second = save_template(db, "welcome", subject="Hi {{ name }}", text="Hello there {{ name }}")
    db.commit()

    assert (first.version, second.version) == (1, 2)
    assert first.id != second.id
    assert get_template(db, "welcome").id == second.id
    assert get_template(db, "welcome", version=1).text == "Hello {{ name }}"


def test_saving_identical_content_returns_the_latest_version_unchanged(db):
    first = save_template(db, "welcome", subject="Hi", html="<p>Hello</p>")
    again = save_template(db, "welcome", subject=" Hi\n", html="<p>Hello</p>")
    db.commit()

    assert again.id == first.id
    assert [t.version for t in list_versions(db, "welcome")] == [1]


def test_locales_fall_back_from_region_to_language_to_the_default(db):
    save_template(db, "welcome", subject="Hello", text="default")
    save_template(db, "welcome", subject="Bonjour", text="fr", locale="fr")
    save_template(db, "welcome", subject="Allo", text="fr-CA", locale="fr_ca")
    db.commit()

    assert get_template(db, "welcome", locale="fr-CA").text == "fr-CA"
    assert get_template(db, "welcome", locale="fr-BE").text == "fr"
    assert get_template(db, "welcome", locale="de").text == "default"
    assert get_template(db, "welcome").text == "default"
    assert get_template(db, "welcome", locale="fr-CA").locale == "fr-CA"


def test_a_missing_template_or_version_raises_template_not_found(db):
    save_template(db, "welcome", subject="Hello", text="x")
    db.commit()

    with pytest.raises(TemplateNotFound, match="'receipt'"):
        get_template(db, "receipt")
    with pytest.raises(LookupError, match="version 7"):
        get_template(db, "welcome", version=7)


def test_list_templates_returns_the_latest_version_of_each_name_and_locale(db):
    save_template(db, "welcome", subject="Hello", text="v1")
    save_template(db, "welcome", subject="Hello", text="v2")
    save_template(db, "welcome", subject="Bonjour", text="fr", locale="fr")
    save_template(db, "receipt", subject="Receipt", text="r")
    db.commit()

    latest = [(t.name, t.locale, t.version) for t in list_templates(db)]

    assert latest == [("receipt", "", 1), ("welcome", "", 2), ("welcome", "fr", 1)]
    assert [t.text for t in list_versions(db, "welcome")] == ["v1", "v2"]
    assert [t.text for t in list_versions(db, "welcome", "fr")] == ["fr"]


@pytest.mark.parametrize("name", ["", "Welcome", "-welcome", "wel come", "a" * 101, "é"])
def test_invalid_template_names_are_refused(sqlite_db, name):
    with pytest.raises(TemplateError, match="not a template name"):
        save_template(sqlite_db, name, subject="Hi", text="x")


@pytest.mark.parametrize("locale", ["f", "french-language-tag-x", "fr CA", "fr.CA", "x" * 36])
def test_invalid_locales_are_refused(sqlite_db, locale):
    with pytest.raises(TemplateError, match="not a locale"):
        save_template(sqlite_db, "welcome", subject="Hi", text="x", locale=locale)


def test_locales_are_normalised_to_bcp47_spelling():
    assert normalize_locale("FR_ca") == "fr-CA"
    assert normalize_locale("zh-hant-tw") == "zh-Hant-TW"
    assert normalize_locale("es-419") == "es-419"
    assert locale_chain("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh", ""]
    assert locale_chain(None) == [""]


def test_a_template_needs_a_subject_and_a_text_or_html_part(sqlite_db):
    with pytest.raises(TemplateError, match="needs a subject"):
        save_template(sqlite_db, "welcome", subject="  ", text="x")
    with pytest.raises(TemplateError, match="text or an HTML part"):
        save_template(sqlite_db, "welcome", subject="Hi", text="", html=None)


def test_a_syntax_error_at_save_names_the_template_the_version_it_would_get_and_the_line(db):
    save_template(db, "welcome", subject="Hi", text="fine")

    with pytest.raises(TemplateError) as caught:
        save_template(db, "welcome", subject="Hi", html="<p>\n\n{{ name }\n</p>")

    error = caught.value
    assert (error.template, error.version, error.line) == ("welcome", 2, 3)
    assert "welcome v2 html, line 3" in str(error)
    assert isinstance(error, MessageRejected)
    assert [t.version for t in list_versions(db, "welcome")] == [1]


def test_template_error_keeps_its_original_constructor():
    error = TemplateError("bad", field="template")

    assert str(error) == "template: bad"
    assert (error.template, error.version, error.line) == (None, None, None)


def test_context_is_escaped_in_the_html_part_only(renderer):
    template = unsaved(subject="For {{ who }}", text="Text {{ who }}", html="<p>{{ who }}</p>")

    rendered = renderer.render(template, {"who": "<script>x</script>"})

    assert rendered.html == "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    assert rendered.text == "Text <script>x</script>"
    assert rendered.subject == "For <script>x</script>"


def test_an_undefined_variable_names_the_template_version_and_line(renderer):
    template = unsaved(text="Hello\n{{ user.name }}", version=3)

    with pytest.raises(TemplateError) as caught:
        renderer.render(template, {})

    error = caught.value
    assert (error.template, error.version, error.line) == ("welcome", 3, 2)
    assert "'user' is undefined" in str(error)


def test_an_error_inside_a_macro_names_the_macro_line(renderer):
    source = "{% macro price(x) %}\n{{ x + 'EUR' }}\n{% endmacro %}\nTotal: {{ price(3) }}"

    with pytest.raises(TemplateError, match="TypeError") as caught:
        renderer.render(unsaved(text=source), {})

    assert caught.value.line == 2


def test_a_rendered_subject_with_a_line_break_is_refused(renderer):
    template = unsaved(subject="Hello {{ name }}", text="x")

    assert renderer.render(template, {"name": "Ann\n"}).subject == "Hello Ann"
    with pytest.raises(TemplateError, match="line break"):
        renderer.render(template, {"name": "Ann\r\nBcc: victim@example.test"})


def test_the_text_part_is_derived_from_the_html_when_the_template_has_none(renderer):
    template = unsaved(html="<h1>Welcome, {{ name }}</h1><p>Thanks &amp; enjoy.</p>")

    rendered = renderer.render(template, {"name": "Ann"})

    assert rendered.text == "Welcome, Ann\n\nThanks & enjoy."


def test_html_to_text_renders_a_realistic_email_readably():
    html = """<!DOCTYPE html>
    <html><head><title>Your order</title><style>p { color: red }</style></head>
    <body>
      <script>track()</script>
      <h1>Thanks for   your order,&nbsp;Ann!</h1>
      <p>We shipped it.<br>It arrives on <b>Monday</b>.</p>
      <ul><li>2 &times; Tea</li><li>1 &times; <i>Cups</i></li></ul>
      <table><tr><td>Total</td><td>&euro;12.50</td></tr></table>
      <p><a href="https://shop.test/orders/42">Track your parcel</a>
         or mail <a href="mailto:help@shop.test">help@shop.test</a>.
         <a href="https://shop.test">https://shop.test</a></p>
    </body></html>"""

    assert html_to_text(html) == (
        "Thanks for your order, Ann!\n\n"
        "We shipped it.\nIt arrives on Monday.\n\n"
        "- 2 \u00d7 Tea\n- 1 \u00d7 Cups\n\n"
        "Total €12.50\n\n"
        "Track your parcel (https://shop.test/orders/42) or mail help@shop.test. https://shop.test"
    )


def test_css_is_inlined_into_style_attributes(renderer):
    html = (
        "<html><head><style>p { color: red } .big { font-size: 20px }</style></head>"
        '<body><p class="big">Hi {{ name }}</p></body></html>'
    )

    rendered = renderer.render(unsaved(html=html), {"name": "Ann"})

    assert rendered.html is not None
    assert "<style" not in rendered.html
    assert 'style="color: red;font-size: 20px;"' in rendered.html
    assert rendered.text == "Hi Ann"


def test_linked_stylesheets_are_never_fetched(renderer, tmp_path):
    stylesheet = tmp_path / "secret.css"
    stylesheet.write_text("p { color: blue }")
    html = f'<html><head><link rel="stylesheet" href="file://{stylesheet}"></head><p>x</p></html>'

    rendered = renderer.render(unsaved(html=html), {})

    assert rendered.html is not None
    assert "blue" not in rendered.html


def test_compiled_templates_are_cached_by_id(renderer):
    template = unsaved(text="{{ 1 + 1 }}")
    template.id = "01TEMPLATECACHEDXXXXXXXXXX"
    renderer.render(template, {})
    template.text = "changed"  # saved rows never change, so the cache may ignore this

    assert renderer.render(template, {}).text == "2"


def write(folder: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")


def test_sync_folder_loads_templates_and_versions_only_what_changed(db, tmp_path):
    write(
        tmp_path,
        {
            "welcome.subject": "Welcome {{ name }}\n",
            "welcome.html": "<p>Hello {{ name }}</p>\n",
            "welcome.fr.subject": "Bienvenue {{ name }}\n",
            "welcome.fr.html": "<p>Bonjour {{ name }}</p>\n",
            "receipt.subject": "Receipt",
            "receipt.txt": "Paid.",
            "README.md": "not a template",
        },
    )

    first = sync_folder(db, tmp_path)
    again = sync_folder(db, tmp_path)
    (tmp_path / "welcome.fr.html").write_text("<p>Salut {{ name }}</p>")
    changed = sync_folder(db, tmp_path)
    db.commit()

    assert sorted((t.name, t.locale, t.version) for t in first) == [
        ("receipt", "", 1),
        ("welcome", "", 1),
        ("welcome", "fr", 1),
    ]
    assert again == []
    assert [(t.name, t.locale, t.version) for t in changed] == [("welcome", "fr", 2)]
    assert get_template(db, "welcome", locale="fr-CA").subject == "Bienvenue {{ name }}"
    assert get_template(db, "receipt").text == "Paid."


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"welcome.subject": "Hi", "welcome.html": "<p>\n{{ name }\n"}, "welcome.html: welcome v1"),
        ({"welcome.subject": "Hi {% if %}", "welcome.txt": "x"}, "welcome.subject: welcome v1"),
        ({"welcome.fr.html": "<p>x</p>"}, "welcome.fr.html: no welcome.fr.subject"),
        ({"Welcome.subject": "Hi", "Welcome.txt": "x"}, "Welcome.subject: 'Welcome' is not"),
        ({"welcome.f.subject": "Hi", "welcome.f.txt": "x"}, "welcome.f.subject: 'f' is not"),
        ({"welcome.subject": "Hi"}, "welcome.subject: a template needs a text or an HTML"),
    ],
)
def test_sync_folder_names_the_bad_file(sqlite_db, tmp_path, files, message):
    write(tmp_path, files)

    with pytest.raises(TemplateError, match=message):
        sync_folder(sqlite_db, tmp_path)


def test_sync_folder_refuses_a_file_that_is_not_utf8(sqlite_db, tmp_path):
    write(tmp_path, {"welcome.subject": "Hi"})
    (tmp_path / "welcome.txt").write_bytes(b"caf\xe9")

    with pytest.raises(TemplateError, match=r"welcome\.txt: cannot be read"):
        sync_folder(sqlite_db, tmp_path)

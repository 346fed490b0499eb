from __future__ import annotations

import pytest
from sqlalchemy import func, select

from postroom.errors import MessageRejected, TemplateError
from postroom.messages import Message


@pytest.fixture
def welcome(client):
    client.save_template(
        "welcome",
        subject="Welcome, {{ name }}",
        html="<style>p { color: red }</style><p>Hi {{ name }}, <a href='{{ url }}'>start</a></p>",
    )
    client.save_template(
        "welcome", locale="fr", subject="Bienvenue, {{ name }}", text="Salut {{ name }}"
    )
    return client


def stored_messages(client) -> int:
    with client.sessions() as session:
        return session.scalar(select(func.count()).select_from(Message))


def test_a_template_renders_at_enqueue_and_the_message_records_which_version(welcome, outbox):
    message = welcome.send(
        "a@example.com", template="welcome", context={"name": "<Ann>", "url": "https://x.example/s"}
    )
    assert message.subject == "Welcome, <Ann>"
    assert message.html is not None and "Hi &lt;Ann&gt;" in message.html
    assert '<p style="color: red;">' in message.html  # CSS inlined
    assert message.text == "Hi <Ann>, start (https://x.example/s)"
    assert (message.template_name, message.template_locale, message.template_version) == (
        "welcome",
        "",
        1,
    )
    # a new version changes later messages, never stored ones
    welcome.save_template("welcome", subject="Hello {{ name }}", text="v2")
    later = welcome.send("a@example.com", template="welcome", context={"name": "Bo"})
    assert (later.subject, later.template_version) == ("Hello Bo", 2)
    welcome.deliver([message.id])
    assert outbox[0].email["Subject"] == "Welcome, <Ann>"


def test_locale_variants_fall_back_to_the_language_then_the_default(welcome):
    assert (
        welcome.send(
            "a@example.com", template="welcome", locale="fr-CA", context={"name": "Zoé"}
        ).subject
        == "Bienvenue, Zoé"
    )
    default = welcome.send(
        "a@example.com", template="welcome", locale="de", context={"name": "Jo", "url": "u"}
    )
    assert (default.subject, default.template_locale) == ("Welcome, Jo", "")


def test_an_undefined_variable_is_a_template_error_naming_template_version_and_line(welcome):
    with pytest.raises(TemplateError) as raised:
        welcome.send("a@example.com", template="welcome", context={"name": "Ann"})
    error = raised.value
    assert (error.template, error.version, error.line) == ("welcome", 1, 1)
    assert "url" in str(error)
    assert stored_messages(welcome) == 0


def test_an_unknown_template_is_rejected_naming_the_field(client):
    with pytest.raises(TemplateError) as raised:
        client.send("a@example.com", template="nope")
    assert raised.value.field == "template"


def test_a_template_and_direct_content_together_are_rejected(welcome):
    with pytest.raises(MessageRejected) as raised:
        welcome.send(
            "a@example.com", "Subject too", template="welcome", context={"name": "A", "url": "u"}
        )
    assert raised.value.field == "template"


def test_html_without_text_gets_a_derived_text_part(client):
    message = client.send("a@example.com", "Hi", html="<h1>Title</h1><p>Body <b>bold</b></p>")
    assert message.text == "Title\n\nBody bold"


def test_a_template_preview_renders_without_storing(welcome):
    template, rendered = welcome.render_template("welcome", {"name": "Ann", "url": "u"})
    assert (template.version, rendered.subject) == (1, "Welcome, Ann")
    assert stored_messages(welcome) == 0

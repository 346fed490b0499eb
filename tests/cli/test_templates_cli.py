"""`postroom templates` (list, show, sync, render) and `postroom send --template/--attach`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from postroom.cli.main import main_app
from postroom.client import Postroom

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\xff" * 20


@pytest.fixture
def cli_env(settings, tmp_path, monkeypatch):
    # A .env in the working directory would be read by Settings(): run from an empty folder.
    monkeypatch.chdir(tmp_path)
    from tests.servers import free_port

    # nothing listens on this broker: send must still store the message
    return {
        "POSTROOM_DATABASE_URL": settings.database_url,
        "POSTROOM_DATA_DIR": str(tmp_path / ".postroom"),
        "POSTROOM_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "POSTROOM_TRANSPORT_URL": settings.transport_url,
    }


@pytest.fixture
def db(settings):
    client = Postroom(settings, publish=lambda stream, ids: None)
    yield client
    client.close()


@pytest.fixture
def folder(tmp_path):
    """A template folder: welcome (default and fr) and receipt."""
    path = tmp_path / "templates"
    path.mkdir()
    (path / "welcome.subject").write_text("Welcome, {{ name }}")
    (path / "welcome.html").write_text("<p>Hi {{ name }}</p>")
    (path / "welcome.fr.subject").write_text("Bienvenue, {{ name }}")
    (path / "welcome.fr.txt").write_text("Salut {{ name }}")
    (path / "receipt.subject").write_text("Receipt")
    (path / "receipt.txt").write_text("Total:\n{{ order.total }}")
    (path / "README.md").write_text("not a template")
    return path


def invoke(env, *args):
    return CliRunner().invoke(main_app(), list(args), env=env)


def unwrapped(text):
    return " ".join(text.split())


def test_sync_saves_changed_templates_and_list_shows_the_latest(cli_env, folder):
    first = invoke(cli_env, "templates", "sync", str(folder))
    again = invoke(cli_env, "templates", "sync", str(folder))
    (folder / "welcome.html").write_text("<p>Hello {{ name }}</p>")
    changed = invoke(cli_env, "templates", "sync", str(folder))
    listed = invoke(cli_env, "templates", "list")

    assert first.exit_code == 0, first.output
    assert sorted(first.stdout.splitlines()) == [
        "saved receipt v1",
        "saved welcome [fr] v1",
        "saved welcome v1",
    ]
    assert again.stdout.strip() == "every template is up to date"
    assert changed.stdout.splitlines() == ["saved welcome v2"]
    assert listed.exit_code == 0
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()][2:]
    assert [row[:3] for row in rows] == [
        ["receipt", "(default)", "1"],
        ["welcome", "(default)", "2"],
        ["welcome", "fr", "1"],
    ]


def test_list_without_templates_says_how_to_add_them(cli_env):
    result = invoke(cli_env, "templates", "list")

    assert result.exit_code == 0
    assert "templates sync" in result.stdout


def test_show_prints_the_version_a_locale_resolves_to(cli_env, db):
    db.save_template("welcome", subject="Welcome v1", text="one")
    db.save_template("welcome", subject="Welcome v2", text="two", html="<p>two</p>")
    db.save_template("welcome", locale="fr", subject="Bienvenue", text="un")

    newest = invoke(cli_env, "templates", "show", "welcome")
    pinned = invoke(cli_env, "templates", "show", "welcome", "--version", "1")
    french = invoke(cli_env, "templates", "show", "welcome", "--locale", "fr-CA")

    assert newest.exit_code == 0, newest.output
    assert newest.stdout.splitlines()[0].startswith("# welcome v2, saved ")
    assert newest.stdout.splitlines()[1:] == [
        "Subject: Welcome v2",
        "",
        "# text",
        "two",
        "",
        "# html",
        "<p>two</p>",
    ]
    assert "Subject: Welcome v1" in pinned.stdout
    assert "# html" not in pinned.stdout
    assert french.stdout.startswith("# welcome [fr] v1")


@pytest.mark.parametrize(
    "args",
    [["show", "nope"], ["show", "welcome", "--version", "7"], ["render", "nope"]],
    ids=["unknown name", "unknown version", "render unknown"],
)
def test_unknown_templates_exit_with_code_2(cli_env, db, args):
    db.save_template("welcome", subject="Hi", text="x")

    result = invoke(cli_env, "templates", *args)

    assert result.exit_code == 2
    assert "no template" in result.stderr


def test_render_prints_the_rendered_parts_and_stores_nothing(cli_env, db, tmp_path):
    db.save_template("welcome", subject="Welcome, {{ name }}", html="<p>Hi {{ name }}</p>")
    context_file = tmp_path / "context.json"
    context_file.write_text(json.dumps({"name": "Bo"}))

    inline = invoke(cli_env, "templates", "render", "welcome", "--context", '{"name": "<Ann>"}')
    from_file = invoke(
        cli_env, "templates", "render", "welcome", "--context-file", str(context_file)
    )

    assert inline.exit_code == 0, inline.output
    assert inline.stdout.splitlines() == [
        "# welcome v1",
        "Subject: Welcome, <Ann>",
        "",
        "# text",
        "Hi <Ann>",
        "",
        "# html",
        "<p>Hi &lt;Ann&gt;</p>",
    ]
    assert "Subject: Welcome, Bo" in from_file.stdout
    assert db.list_messages() == []


def test_a_render_error_names_the_template_version_and_line(cli_env, folder):
    invoke(cli_env, "templates", "sync", str(folder))

    result = invoke(cli_env, "templates", "render", "receipt", "--context", "{}")

    assert result.exit_code == 2
    assert "receipt v1 text, line 2" in unwrapped(result.stderr)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--context", "{name: 1}"], "--context is not valid JSON"),
        (["--context", "[1, 2]"], "--context must be a JSON object"),
        (["--context-file", "missing.json"], "cannot read it"),
        (["--context", "{}", "--context-file", "c.json"], "not both"),
    ],
    ids=["bad JSON", "not an object", "missing file", "both"],
)
def test_a_bad_context_exits_with_code_2(cli_env, db, args, expected):
    db.save_template("welcome", subject="Hi", text="x")

    result = invoke(cli_env, "templates", "render", "welcome", *args)

    assert result.exit_code == 2
    assert expected in unwrapped(result.stderr)


def test_sync_of_a_missing_folder_or_a_broken_template_exits_with_code_2(cli_env, folder):
    missing = invoke(cli_env, "templates", "sync", str(folder / "nope"))
    (folder / "receipt.txt").write_text("{% for %}")
    broken = invoke(cli_env, "templates", "sync", str(folder))

    assert missing.exit_code == 2
    assert broken.exit_code == 2
    assert "receipt.txt" in unwrapped(broken.stderr)
    assert "line 1" in unwrapped(broken.stderr)


# send --template / --attach / --inline ------------------------------------------------------


def test_send_renders_a_template_with_context_and_locale(cli_env, db, folder):
    invoke(cli_env, "templates", "sync", str(folder))

    result = invoke(
        cli_env,
        "send",
        "--to",
        "a@example.com",
        "--template",
        "welcome",
        "--context",
        '{"name": "Zoé"}',
        "--locale",
        "fr-CA",
    )

    assert result.exit_code == 0, result.output
    message_id, status = result.stdout.split()
    message = db.get_message(message_id)
    assert status == "queued"
    assert message.subject == "Bienvenue, Zoé"
    assert (message.template_name, message.template_locale, message.template_version) == (
        "welcome",
        "fr",
        1,
    )


def test_send_attaches_files_and_inline_images(cli_env, db, tmp_path, outbox):
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)

    result = invoke(
        cli_env,
        "send",
        "--to",
        "a@example.com",
        "--subject",
        "Report",
        "--html",
        '<img src="cid:logo.png">',
        "--attach",
        str(report),
        "--inline",
        str(logo),
    )

    assert result.exit_code == 0, result.output
    message_id = result.stdout.split()[0]
    db.deliver([message_id])
    parts = {part.get_filename(): part for part in outbox[-1].email.walk() if part.get_filename()}
    assert parts["report.csv"].get_payload(decode=True) == b"a,b\n1,2\n"
    assert parts["report.csv"].get_content_disposition() == "attachment"
    assert parts["logo.png"].get_payload(decode=True) == PNG
    assert parts["logo.png"]["Content-ID"] == "<logo.png>"
    assert parts["logo.png"].get_content_disposition() == "inline"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--template", "welcome", "--context", "{oops"], "--context is not valid JSON"),
        (["--template", "nope"], "no template 'nope'"),
        (["--template", "receipt", "--context", "{}"], "receipt v1 text, line 2"),
        (["--template", "welcome", "--subject", "Hi"], "not both"),
        (["--subject", "Hi", "--text", "x", "--context", "{}"], "go with --template"),
        (["--subject", "Hi", "--text", "x", "--attach", "missing.pdf"], "missing.pdf"),
        (["--subject", "Hi", "--text", "x", "--inline", "."], "."),
    ],
    ids=[
        "bad context",
        "unknown template",
        "template error",
        "template and subject",
        "context without template",
        "missing attachment",
        "folder as inline image",
    ],
)
def test_bad_template_or_attachment_input_exits_with_code_2_and_stores_nothing(
    cli_env, db, folder, args, expected
):
    invoke(cli_env, "templates", "sync", str(folder))

    result = invoke(cli_env, "send", "--to", "a@example.com", *args)

    assert result.exit_code == 2, result.output
    assert expected in unwrapped(result.stderr)
    assert db.list_messages() == []

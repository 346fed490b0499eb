"""Issue 3 acceptance: content survives a real worker and SMTP server; templates stay contained.

1. A corpus of messages (scripts, IDN, SMTPUTF8, attachments, inline images, long lines, many
   recipients, templates) goes producer → Redis → ``postroom worker`` → SMTP server, and each
   arrives as the caller asked, DKIM-signed per sender domain.
2. Template attacks are refused (at save or with HTTP 422) by a real ``postroom api`` process,
   which, like the worker, keeps serving afterwards.
3. Template errors name the template, its version and the line, over HTTP and from ``send()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from postroom import api_keys
from postroom.client import Postroom
from postroom.errors import TemplateError
from postroom.messages import Message
from postroom.settings import Settings
from tests.integration.conftest import (
    ApiProcess,
    MakeProducer,
    MakeSettings,
    StartWorker,
    start_postroom,
)
from tests.integration.content_corpus import (
    ED_DOMAIN,
    ED_DOMAIN_ASCII,
    ED_SELECTOR,
    LEAK_MARKERS,
    RSA_DOMAIN,
    RSA_SELECTOR,
    TEMPLATES,
    Attack,
    assert_arrived_as_sent,
    build_corpus,
    decoded_text,
    injection_corpus,
    parse,
)
from tests.integration.support import statuses, wait_until_final
from tests.servers import SmtpSink, free_port
from tests.test_dkim import dns, ed25519_pem_pair, rsa_pair

pytestmark = pytest.mark.integration


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """The SMTP server offers SMTPUTF8, as a modern MTA does, for non-ASCII mailboxes."""
    sink = SmtpSink(smtputf8=True).start()
    yield sink
    sink.stop()


StartApi = Callable[[Settings], ApiProcess]


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[StartApi]:
    """Factory: start a real ``postroom api`` on a free port and wait until it answers."""
    started: list[ApiProcess] = []

    def start(settings: Settings) -> ApiProcess:
        port = free_port()
        log_path = tmp_path / f"api-{len(started) + 1}.log"
        arguments = ["api", "--port", str(port)]
        process = start_postroom(arguments, settings, cwd=tmp_path, log_path=log_path)
        started.append(ApiProcess(process, f"http://127.0.0.1:{port}", log_path))
        started[-1].wait_ready()
        return started[-1]

    yield start
    for api in started:
        api.stop()


def api_client(api: ApiProcess, producer: Postroom) -> httpx.Client:
    """An HTTP client authenticated with a fresh key stored in the API's database."""
    with producer.sessions.begin() as session:
        created = api_keys.create_key(session, "content tests")
    return httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {created.secret}"}, timeout=60
    )


def count_messages(producer: Postroom) -> int:
    with producer.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def assert_no_leak(text: str) -> None:
    """No Python object was printed: what an attribute walk to internals would show."""
    assert not [marker for marker in LEAK_MARKERS if marker in text], text[:500]


# 1. the corpus -----------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_every_corpus_message_arrives_as_sent_and_signed(
    database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    rsa, ed25519 = rsa_pair(keys, "rsa"), ed25519_pem_pair(keys, "ed25519")
    settings = make_integration_settings(
        database_url,
        dkim=[
            {"domain": RSA_DOMAIN, "selector": RSA_SELECTOR, "private_key_path": str(rsa.path)},
            {
                "domain": ED_DOMAIN,
                "selector": ED_SELECTOR,
                "private_key_path": str(ed25519.path),
                "algorithm": "ed25519-sha256",
            },
        ],
    )
    # only what DNS would publish: a verifier finds these two keys and nothing else
    dnsfunc = dns(
        {
            f"{RSA_SELECTOR}._domainkey.{RSA_DOMAIN}.": rsa,
            f"{ED_SELECTOR}._domainkey.{ED_DOMAIN_ASCII}.": ed25519,
        }
    )
    worker(settings)
    producer = make_producer(settings)
    for name, parts in TEMPLATES.items():
        producer.save_template(name, **parts)
    corpus = build_corpus(tmp_path / "files")
    assert len(corpus) >= 20

    sent = {producer.send(**case.send): case for case in corpus}

    smtp_sink.wait_for(len(corpus), timeout=60)
    wait_until_final(producer, [message.id for message in sent])
    assert set(statuses(producer, [message.id for message in sent]).values()) == {"sent"}
    received = {parse(r.data)["Message-ID"]: r for r in smtp_sink.received}
    assert len(smtp_sink.received) == len(corpus)
    for message, case in sent.items():
        with subtests.test(msg=case.name):
            assert_arrived_as_sent(case, received[message.message_id_header], dnsfunc)


# 2. template attacks -------------------------------------------------------------------------


@dataclass
class Outcome:
    attack: Attack
    stage: str
    seconds: float
    detail: str


def attempt(
    attack: Attack, producer: Postroom, http: httpx.Client
) -> tuple[Outcome, httpx.Response | None]:
    """Save the attack as a template and send with it; report which stage stopped it."""
    name = f"attack-{attack.name}"
    started = time.perf_counter()
    try:
        producer.save_template(
            name, subject=f"Attack {attack.name}", **{attack.part: attack.source}
        )
    except TemplateError as error:
        seconds = time.perf_counter() - started
        assert (error.template, error.version, error.line) == (name, 1, 1)
        assert producer.list_template_versions(name) == []
        return Outcome(attack, "save", seconds, str(error)), None
    started = time.perf_counter()
    response = http.post(
        "/v1/messages",
        json={"to": "victim@example.net", "template": name, "context": dict(attack.context)},
    )
    seconds = time.perf_counter() - started
    stage = "send" if response.status_code == 422 else "contained"
    return Outcome(attack, stage, seconds, response.text), response


@pytest.mark.timeout(180)
def test_template_attacks_are_refused_and_both_processes_keep_serving(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    api_server: StartApi,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    settings = make_integration_settings(postgres_database_url)
    worker(settings)
    api = api_server(settings)
    producer = make_producer(settings)
    sentinel = tmp_path / "sentinel"
    attacks = injection_corpus(sentinel)
    assert len(attacks) >= 12
    outcomes: list[Outcome] = []
    contained: dict[str, Attack] = {}

    with api_client(api, producer) as http:
        for attack in attacks:
            with subtests.test(msg=attack.name):
                before = count_messages(producer)
                outcome, response = attempt(attack, producer, http)
                outcomes.append(outcome)
                assert outcome.stage == attack.refused_at, outcome.detail
                assert_no_leak(outcome.detail)
                if response is None:
                    continue
                if attack.refused_at == "send":
                    error = response.json()["error"]
                    assert error["type"] == "TemplateError"
                    # the error says which template, version, part and line failed
                    name = f"attack-{attack.name}"
                    assert error["template"] == {"name": name, "version": 1, "line": 1}
                    assert error["message"].startswith(f"{name} v1 {attack.part}, line 1: ")
                    assert count_messages(producer) == before
                else:
                    assert response.status_code == 202, response.text
                    contained[response.json()["id"]] = attack
                    assert count_messages(producer) == before + 1

        assert not sentinel.exists()
        assert api.is_running()
        producer.save_template("welcome", subject="Welcome {{ name }}", html="<p>Hi {{ name }}</p>")
        response = http.post(
            "/v1/messages",
            json={"to": "zoe@example.net", "template": "welcome", "context": {"name": "Zoë"}},
        )
        assert response.status_code == 202, response.text
        welcome_id = response.json()["id"]

    refusals = sorted((o for o in outcomes if o.stage != "contained"), key=lambda o: -o.seconds)
    print(f"\nslowest refusals of {len(refusals)} (save, or POST answered 422):")
    for outcome in refusals[:5]:
        print(f"  {outcome.attack.name:22} at {outcome.stage:4} {outcome.seconds:.3f} s")

    # the worker survived the corpus too: it delivers the normal send and the contained ones
    smtp_sink.wait_for(1 + len(contained))
    wait_until_final(producer, [welcome_id, *contained])
    assert set(statuses(producer, [welcome_id, *contained]).values()) == {"sent"}
    by_subject = {str(parse(r.data)["Subject"]): parse(r.data) for r in smtp_sink.received}
    welcome = by_subject.pop("Welcome Zoë")
    assert decoded_text(welcome.get_body(("html",))) == "<p>Hi Zoë</p>\n"
    for attack in contained.values():
        delivered = by_subject.pop(f"Attack {attack.name}")
        assert decoded_text(delivered.get_body(("plain",))) == f"{attack.output}\n"
    assert by_subject == {}
    for received in smtp_sink.received:
        assert_no_leak(received.data.decode("utf-8", "replace"))
    assert not sentinel.exists()


# 3. template errors at send -----------------------------------------------------------------


def test_template_errors_name_the_template_version_and_line(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    api_server: StartApi,
) -> None:
    settings = make_integration_settings(postgres_database_url)
    api = api_server(settings)
    producer = make_producer(settings)

    # a syntax error is refused when the template is saved, naming the part's line
    with pytest.raises(TemplateError) as syntax:
        producer.save_template("broken", subject="Hi", text="Hello\n{% for %}\nbye")
    assert (syntax.value.template, syntax.value.version, syntax.value.line) == ("broken", 1, 2)
    assert str(syntax.value).startswith("broken v1 text, line 2: ")
    assert producer.list_template_versions("broken") == []
    producer.save_template("welcome", subject="Hi {{ name }}", text="Hi {{ name }}")
    with api_client(api, producer) as http:
        saved = http.post(
            "/v1/templates",
            json={"name": "welcome", "subject": "Hi", "html": "<p>\n{{ name }}\n{{ name | }}</p>"},
        )
    assert saved.status_code == 422, saved.text
    assert saved.json()["error"]["template"] == {"name": "welcome", "version": 2, "line": 3}
    assert saved.json()["error"]["message"].startswith("welcome v2 html, line 3: ")
    with pytest.raises(TemplateError) as second:
        producer.save_template("welcome", subject="Hi", html="<p>\n{{ name }}\n{{ name | }}</p>")
    assert (second.value.template, second.value.version, second.value.line) == ("welcome", 2, 3)
    assert str(second.value).startswith("welcome v2 html, line 3: ")

    # an undefined variable surfaces at send, for the version that was rendered
    producer.save_template(
        "welcome", subject="Hi {{ name }}", text="Hello {{ name }},\n\nyour code is {{ code }}.\n"
    )
    body: dict[str, Any] = {"to": "zoe@example.net", "template": "welcome"}
    with api_client(api, producer) as http:
        response = http.post("/v1/messages", json={**body, "context": {"name": "Zoë"}})
        subject_response = http.post("/v1/messages", json={**body, "context": {"code": 7}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "TemplateError"
    assert error["message"] == "welcome v2 text, line 3: 'code' is undefined"
    assert error["template"] == {"name": "welcome", "version": 2, "line": 3}
    assert subject_response.status_code == 422, subject_response.text
    subject_error = subject_response.json()["error"]
    assert subject_error["message"] == "welcome v2 subject, line 1: 'name' is undefined"
    assert subject_error["template"] == {"name": "welcome", "version": 2, "line": 1}

    with pytest.raises(TemplateError) as undefined:
        producer.send("zoe@example.net", template="welcome", context={"name": "Zoë"})
    assert (undefined.value.template, undefined.value.version, undefined.value.line) == (
        "welcome",
        2,
        3,
    )
    assert str(undefined.value) == "welcome v2 text, line 3: 'code' is undefined"
    assert count_messages(producer) == 0

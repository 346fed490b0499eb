"""TransportRegistry: routing, configuration checks, failover against real SMTP servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from postroom.errors import (
    ConfigurationError,
    MessageRejected,
    PermanentFailure,
    TemporaryFailure,
    UnknownTransport,
)
from postroom.settings import Settings
from postroom.transports import create_transport
from postroom.transports.base import Envelope
from postroom.transports.memory import MemoryTransport
from postroom.transports.registry import FailoverRule, RegistryConfig, Route, TransportRegistry
from tests.servers import SmtpSink
from tests.transports.contract import make_envelope

SECRET = "s3cr3t-pa55"


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_registry(clock: Clock) -> Iterator[Callable[..., TransportRegistry]]:
    """Factory: a registry from settings fields, closed after the test."""
    registries: list[TransportRegistry] = []

    def make(**fields: Any) -> TransportRegistry:
        fields.setdefault("transport_url", "memory://registry-default")
        registry = TransportRegistry.from_settings(Settings(_env_file=None, **fields), clock=clock)
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.close()


SENT, DEFERRED, FAILED = "sent", "deferred", "failed"


def send_through(
    registry: TransportRegistry,
    envelope: Envelope,
    *,
    stream: str = "transactional",
    sender_domain: str = "sender.test",
) -> tuple[str, str]:
    """Route, lease, send and record as delivery does: (transport used, outcome)."""
    name = registry.active(
        registry.route(explicit=None, stream=stream, sender_domain=sender_domain)
    )
    with registry.lease(name) as transport:
        try:
            transport.send(envelope)
        except TemporaryFailure:
            registry.record(name, temporary_failure=True)
            return name, DEFERRED
        except PermanentFailure:
            registry.record(name, temporary_failure=False)
            return name, FAILED
    registry.record(name, temporary_failure=False)
    return name, SENT


# ── routing ──────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def routed(make_registry: Callable[..., TransportRegistry]) -> TransportRegistry:
    return make_registry(
        transports={"ses": "memory://ses", "shop": "memory://shop", "idn": "memory://idn"},
        routes=[
            {"stream": "bulk", "sender_domain": "shop.example", "transport": "shop"},
            {"stream": "bulk", "transport": "ses"},
            {"sender_domain": "Bücher.Example.", "transport": "idn"},
            {"sender_domain": "shop.example", "transport": "shop"},
        ],
    )


@pytest.mark.parametrize(
    ("stream", "sender_domain", "expected"),
    [
        ("bulk", "news.example", "ses"),  # by stream
        ("bulk", "shop.example", "shop"),  # the first matching route wins
        ("transactional", "shop.example", "shop"),  # by sender domain
        ("transactional", "SHOP.example", "shop"),  # domains compare case-insensitively
        ("transactional", "xn--bcher-kva.example", "idn"),  # IDN compared in ASCII
        ("transactional", "bücher.example", "idn"),
        ("transactional", "mail.shop.example", "default"),  # exact match: no subdomains
        ("transactional", "news.example", "default"),  # nothing matches
        ("transactional", "not a domain", "default"),
    ],
)
def test_routes_choose_by_stream_and_sender_domain(
    routed: TransportRegistry, stream: str, sender_domain: str, expected: str
):
    assert routed.route(explicit=None, stream=stream, sender_domain=sender_domain) == expected


def test_an_explicit_transport_wins_over_every_route(routed: TransportRegistry):
    assert routed.route(explicit="default", stream="bulk", sender_domain="shop.example") == (
        "default"
    )
    assert routed.route(explicit="idn", stream="bulk", sender_domain="x.example") == "idn"


def test_an_unknown_explicit_transport_is_rejected_naming_the_field(routed: TransportRegistry):
    with pytest.raises(UnknownTransport) as raised:
        routed.route(explicit="sess", stream="bulk", sender_domain="shop.example")

    assert isinstance(raised.value, MessageRejected)
    assert isinstance(raised.value, ValueError)
    assert raised.value.field == "transport"
    assert raised.value.name == "sess"
    assert str(raised.value) == "transport: no transport is named 'sess'"
    assert routed.check("ses") == "ses"
    with pytest.raises(UnknownTransport):
        routed.check("nope")


def test_each_name_leases_from_its_own_transport(routed: TransportRegistry):
    with routed.lease("ses") as ses, routed.lease("default") as default:
        assert isinstance(ses, MemoryTransport)
        assert isinstance(default, MemoryTransport)
        assert (ses.mailbox_name, default.mailbox_name) == ("ses", "registry-default")
    assert set(routed.pools()) == {"ses", "default"}
    assert routed.names == {"default", "ses", "shop", "idn"}
    with pytest.raises(UnknownTransport), routed.lease("elsewhere"):
        pass


def test_settings_read_transports_routes_and_failover_from_the_environment(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "POSTROOM_TRANSPORTS="
        '{"ses": "smtp://user:pw@email-smtp.eu-west-1.amazonaws.com:587", "backup": "memory://b"}\n'
        'POSTROOM_ROUTES=[{"stream": "bulk", "transport": "ses"}]\n'
        'POSTROOM_FAILOVER={"default": {"to": "backup", "after": 3}}\n'
        "POSTROOM_POOL_MAX_SIZE=8\n"
    )
    settings = Settings(_env_file=env_file)

    assert settings.routes == [Route(stream="bulk", transport="ses")]
    assert settings.failover == {"default": FailoverRule(to="backup", after=3)}
    assert settings.failover["default"].cool_down_seconds == 60
    assert list(settings.transport_urls) == ["default", "ses", "backup"]
    config = RegistryConfig.from_settings(settings)
    assert (config.pool_max_size, config.pool_idle_seconds) == (8, 30)


# ── configuration checks ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"routes": [{"stream": "bulk", "transport": "sess"}]},
            "routes[0] names transport 'sess', which is not configured",
        ),
        (
            {"failover": {"primary": {"to": "backup"}}},
            "failover is configured for transport 'primary', which is not configured",
        ),
        (
            {"failover": {"default": {"to": "bakcup"}}},
            "failover['default'] names transport 'bakcup', which is not configured",
        ),
        (
            {"failover": {"default": {"to": "backup"}, "backup": {"to": "default"}}},
            "failover goes round in a circle: default → backup → default",
        ),
        (
            {
                "failover": {
                    "default": {"to": "ses"},
                    "ses": {"to": "backup"},
                    "backup": {"to": "ses"},
                }
            },
            "failover goes round in a circle: ses → backup → ses",
        ),
        (
            {"failover": {"backup": {"to": "backup"}}},
            "failover goes round in a circle: backup → backup",
        ),
    ],
)
def test_configuration_naming_unknown_transports_or_cycles_is_refused(
    make_registry: Callable[..., TransportRegistry], fields: dict[str, Any], message: str
):
    urls = {"ses": f"smtp://user:{SECRET}@smtp.example:587", "backup": "memory://backup"}

    with pytest.raises(ConfigurationError) as raised:
        make_registry(transport_url=f"smtp://u:{SECRET}@primary.example", transports=urls, **fields)

    assert str(raised.value) == message


def test_a_malformed_url_fails_at_startup_naming_the_transport_not_its_password(
    make_registry: Callable[..., TransportRegistry],
):
    with pytest.raises(ConfigurationError) as raised:
        # an unescaped '/' in the password leaves a port that is not a number
        make_registry(transports={"ses": f"smtp://user:{SECRET}/x@smtp.example:587"})

    assert str(raised.value).startswith("transport 'ses': ")
    assert SECRET not in str(raised.value)
    with pytest.raises(ConfigurationError, match="transport 'odd': unknown transport scheme"):
        make_registry(transports={"odd": "carrier-pigeon://coop"})


def test_transport_urls_never_print_their_passwords():
    settings = Settings(
        _env_file=None,
        transports={
            "ses": f"smtp://user:{SECRET}@email-smtp.eu-west-1.amazonaws.com:587",
            "broken": f"smtp://user:{SECRET}/x@smtp.example:587",
        },
    )

    shown = repr(settings) + str(settings)
    assert SECRET not in shown
    assert "smtp://user:***@email-smtp.eu-west-1.amazonaws.com:587" in shown


@pytest.mark.parametrize(
    "fields",
    [
        {"transports": {"default": "memory://x"}},  # default is transport_url
        {"transports": {"a b": "memory://x"}},
        {"routes": [{"strem": "bulk", "transport": "default"}]},  # a typo is not a catch-all
        {"routes": [{"sender_domain": "not a domain", "transport": "default"}]},
        {"failover": {"default": {"to": "backup", "after": 0}}},
        {"failover": {"default": {"to": "backup", "cool_down_seconds": 0}}},
    ],
)
def test_malformed_transport_settings_are_invalid(fields: dict[str, Any]):
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **fields)


# ── failover ─────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def primary() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def secondary() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def failing_over(
    make_registry: Callable[..., TransportRegistry], primary: SmtpSink, secondary: SmtpSink
) -> TransportRegistry:
    return make_registry(
        transport_url=primary.url,
        transports={"backup": secondary.url},
        failover={"default": {"to": "backup", "after": 3, "cool_down_seconds": 60}},
    )


def test_repeated_temporary_failures_switch_to_the_secondary(
    failing_over: TransportRegistry, primary: SmtpSink, secondary: SmtpSink
):
    primary.refuse("451 4.3.0 try again later", times=10)

    outcomes = [send_through(failing_over, make_envelope()) for _ in range(4)]

    assert outcomes == [("default", DEFERRED)] * 3 + [("backup", SENT)]
    assert failing_over.active("default") == "backup"
    assert (len(primary.received), len(secondary.received)) == (0, 1)


def test_after_the_cool_down_the_primary_is_used_again(
    failing_over: TransportRegistry, primary: SmtpSink, secondary: SmtpSink, clock: Clock
):
    primary.refuse("451 4.3.0 try again later", times=3)
    for _ in range(3):
        send_through(failing_over, make_envelope())

    clock.now += 59.9
    assert send_through(failing_over, make_envelope()) == ("backup", SENT)
    clock.now += 0.1
    assert failing_over.active("default") == "default"
    assert send_through(failing_over, make_envelope()) == ("default", SENT)

    assert (len(primary.received), len(secondary.received)) == (1, 1)
    assert failing_over.active("default") == "default"


def test_a_primary_still_failing_after_the_cool_down_trips_again_at_once(
    failing_over: TransportRegistry, primary: SmtpSink, clock: Clock
):
    primary.refuse("451 4.3.0 try again later", times=4)
    for _ in range(3):
        send_through(failing_over, make_envelope())
    clock.now += 60

    assert send_through(failing_over, make_envelope()) == ("default", DEFERRED)  # the probe
    assert failing_over.active("default") == "backup"


def test_a_success_resets_the_count_of_failures(
    failing_over: TransportRegistry, primary: SmtpSink, secondary: SmtpSink
):
    outcomes = []
    for failures in (2, 2):
        primary.refuse("451 4.3.0 try again later", times=failures)
        outcomes += [send_through(failing_over, make_envelope()) for _ in range(failures + 1)]

    assert outcomes[:3] == [("default", DEFERRED)] * 2 + [("default", SENT)]
    assert outcomes[3:] == [("default", DEFERRED)] * 2 + [("default", SENT)]
    assert failing_over.active("default") == "default"
    assert (len(primary.received), len(secondary.received)) == (2, 0)


def test_permanent_failures_do_not_trip_the_primary(
    failing_over: TransportRegistry, primary: SmtpSink
):
    recipients = len(make_envelope().recipients)
    primary.refuse("550 5.1.1 no such user", stage="RCPT", times=5 * recipients)

    outcomes = [send_through(failing_over, make_envelope()) for _ in range(5)]

    assert outcomes == [("default", FAILED)] * 5
    assert failing_over.active("default") == "default"


def test_failover_follows_a_chain_while_each_link_is_tripped(
    make_registry: Callable[..., TransportRegistry], clock: Clock
):
    registry = make_registry(
        transports={"second": "memory://second", "third": "memory://third"},
        failover={
            "default": {"to": "second", "after": 1, "cool_down_seconds": 10},
            "second": {"to": "third", "after": 2, "cool_down_seconds": 30},
        },
    )

    registry.record("default", temporary_failure=True)
    assert registry.active("default") == "second"
    registry.record("second", temporary_failure=True)
    assert registry.active("default") == "second"
    registry.record("second", temporary_failure=True)
    assert registry.active("default") == "third"
    registry.record("third", temporary_failure=True)  # no rule: nothing to trip
    assert registry.active("third") == "third"

    clock.now += 10
    assert registry.active("default") == "default"
    assert registry.active("second") == "third"


def test_failures_reported_during_the_cool_down_do_not_extend_it(
    make_registry: Callable[..., TransportRegistry], clock: Clock
):
    registry = make_registry(
        transports={"backup": "memory://backup"},
        failover={"default": {"to": "backup", "after": 1, "cool_down_seconds": 10}},
    )
    registry.record("default", temporary_failure=True)
    clock.now += 9
    # a send that began before the trip and finished after it
    registry.record("default", temporary_failure=True)

    clock.now += 1
    assert registry.active("default") == "default"


def test_a_registry_built_without_settings_checks_its_urls():
    created: list[str] = []

    def create(url: str) -> Any:
        created.append(url)
        return create_transport(url)

    registry = TransportRegistry(
        RegistryConfig(urls={"default": "memory://a", "b": "memory://b"}), create=create
    )
    assert created == ["memory://a", "memory://b"]
    with registry.lease("b") as transport:
        assert isinstance(transport, MemoryTransport)
    assert created[-1] == "memory://b"
    registry.close()

    with pytest.raises(ConfigurationError, match="no transport is named 'default'"):
        RegistryConfig(urls={"b": "memory://b"})

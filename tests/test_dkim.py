from __future__ import annotations

import base64
import json
import re
import shutil
import smtplib
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from pathlib import Path

import dkim
import nacl.encoding
import nacl.signing
import pytest
from pydantic import ValidationError

from postroom.dkim import DEFAULT_SIGNED_HEADERS, DkimKey, DkimSigner, ascii_domain
from postroom.errors import ConfigurationError
from postroom.settings import Settings
from tests.servers import SmtpSink

NAMES_THE_KEY = re.escape("DKIM key for selector s1 of example.com")


@dataclass(frozen=True)
class KeyPair:
    """A private key on disk and the public half as its DNS TXT record publishes it."""

    algorithm: str
    path: Path
    public: str  # base64, the p= tag

    @property
    def text(self) -> str:
        return self.path.read_text()

    def txt_record(self) -> bytes:
        k = "rsa" if self.algorithm == "rsa-sha256" else "ed25519"
        return f"v=DKIM1; k={k}; p={self.public}".encode()

    def key(self, domain: str, selector: str, **fields: object) -> DkimKey:
        return DkimKey.model_validate(
            {
                "domain": domain,
                "selector": selector,
                "private_key_path": self.path,
                "algorithm": self.algorithm,
                **fields,
            }
        )


def openssl(*args: str) -> bytes:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def rsa_pair(directory: Path, name: str, *, bits: int = 2048, traditional: bool = False) -> KeyPair:
    path = directory / f"{name}.pem"
    openssl("genrsa", *(["-traditional"] if traditional else []), "-out", str(path), str(bits))
    public = openssl("rsa", "-in", str(path), "-pubout", "-outform", "DER")
    return KeyPair("rsa-sha256", path, base64.b64encode(public).decode())


def ed25519_pem_pair(directory: Path, name: str) -> KeyPair:
    path = directory / f"{name}.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
    public = openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")[-32:]
    return KeyPair("ed25519-sha256", path, base64.b64encode(public).decode())


def ed25519_seed_pair(directory: Path, name: str) -> KeyPair:
    """A key in dkimpy's dknewkey format: the base64 seed on one line."""
    key = nacl.signing.SigningKey.generate()
    path = directory / f"{name}.key"
    path.write_bytes(key.encode(encoder=nacl.encoding.Base64Encoder) + b"\n")
    public = key.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return KeyPair("ed25519-sha256", path, public)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("dkim-keys")
    return {
        "rsa": rsa_pair(directory, "rsa"),  # PKCS#8, what OpenSSL 3 writes by default
        "rsa-pkcs1": rsa_pair(directory, "rsa-pkcs1", traditional=True),
        "ed25519": ed25519_pem_pair(directory, "ed25519"),
        "ed25519-seed": ed25519_seed_pair(directory, "ed25519-seed"),
    }


def dns(records: dict[str, KeyPair]) -> Callable[..., bytes | None]:
    """A dnsfunc for dkim.verify answering ``<selector>._domainkey.<domain>.`` from memory."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        pair = records.get(name.decode())
        return pair.txt_record() if pair else None

    return lookup


def verifies(data: bytes, records: dict[str, KeyPair], *, index: int = 0) -> bool:
    """Whether the ``index``-th signature verifies, as a receiver would check it."""
    if index == 0:
        return bool(dkim.verify(data, dnsfunc=dns(records)))
    try:
        return bool(dkim.DKIM(data).verify(idx=index, dnsfunc=dns(records)))
    except dkim.DKIMException:
        return False


def signature_tags(data: bytes, index: int = 0) -> dict[str, str]:
    headers = [value for name, value in dkim.DKIM(data).headers if name == b"DKIM-Signature"]
    value = re.sub(rb"\s+", b"", headers[index]).decode()
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def plain_message(sender: str = "app@example.com") -> EmailMessage:
    email = EmailMessage(policy=SMTP)
    email["From"] = sender
    email["To"] = "user@example.net"
    email["Subject"] = "Your receipt"
    email["Date"] = "Tue, 02 Jun 2026 10:00:00 +0000"
    email["Message-ID"] = "<1@example.com>"
    email.set_content("Thanks for your order.\n")
    return email


def international_message(sender: str = "app@example.com") -> EmailMessage:
    email = EmailMessage(policy=SMTP)
    email["From"] = f"Zoë Ångström <{sender}>"
    email["To"] = "José Müller <user@example.net>"
    email["Cc"] = "Łukasz <cc@example.net>"
    email["Reply-To"] = "Support — Ünïcode <help@example.com>"
    email["Subject"] = "Grüße aus Köln — your order №42 ✓"
    email["Message-ID"] = "<2@example.com>"
    email.set_content("Hallo Jürgen,\nvielen Dank für Ihre Bestellung.\n")
    return email


def multipart_message(sender: str = "app@example.com") -> EmailMessage:
    email = plain_message(sender)
    email.add_alternative("<p>Thanks for your <b>order</b>.</p>", subtype="html")
    email.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="pdf",
                         filename="receipt.pdf")  # fmt: skip
    email["List-Unsubscribe"] = "<https://example.com/u/1>"
    email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return email


def long_lines_message(sender: str = "app@example.com") -> EmailMessage:
    email = plain_message(sender)
    del email["Subject"]
    email["Subject"] = " ".join(["a rather long subject that the policy has to fold"] * 6)
    email.set_content(("x" * 1500 + "\n") * 3 + ". a line that SMTP dot-stuffs\n")
    return email


def smtputf8_message(sender: str = "app@example.com") -> EmailMessage:
    email = EmailMessage(policy=SMTPUTF8)
    email["From"] = f"Zoë <{sender}>"
    email["To"] = "josé@example.net"
    email["Subject"] = "Grüße"
    email.set_content("Hallo\n")
    return email


MESSAGES = {
    "plain": plain_message,
    "international": international_message,
    "multipart": multipart_message,
    "long-lines": long_lines_message,
    "smtputf8": smtputf8_message,
}


@pytest.mark.parametrize("key_name", ["rsa", "rsa-pkcs1", "ed25519", "ed25519-seed"])
@pytest.mark.parametrize("message_name", list(MESSAGES))
def test_signed_messages_verify_against_the_published_key(keys, key_name, message_name):
    pair = keys[key_name]
    signer = DkimSigner.from_keys([pair.key("example.com", "s1")])
    data = MESSAGES[message_name]().as_bytes()

    signed = signer.sign(data, sender_domain="example.com")

    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(data)
    assert verifies(signed, {"s1._domainkey.example.com.": pair})
    tags = signature_tags(signed)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == (
        "example.com",
        "s1",
        pair.algorithm,
        "relaxed/relaxed",
    )


def test_signatures_keep_crlf_line_endings(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    signed = signer.sign(international_message().as_bytes(), sender_domain="example.com")
    assert signed.count(b"\n") == signed.count(b"\r\n")
    header = signed[: signed.index(b"\r\n", signed.index(b"b=")) + 2]
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))  # folded like other headers


def test_lf_messages_get_lf_signatures(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    data = plain_message().as_bytes(policy=SMTP.clone(linesep="\n"))
    signed = signer.sign(data, sender_domain="example.com")
    assert b"\r" not in signed
    assert verifies(signed, {"s1._domainkey.example.com.": keys["rsa"]})


def test_only_present_headers_are_signed_and_from_is_oversigned(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    signed = signer.sign(plain_message().as_bytes(), sender_domain="example.com")
    signed_names = signature_tags(signed)["h"].split(":")
    assert signed_names == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "from",
    ]


def test_configured_headers_replace_the_default_list(keys):
    key = keys["rsa"].key("example.com", "s1", signed_headers=["from", "Subject", "X-Tag"])
    email = plain_message()
    email["X-Tag"] = "receipt"
    signed = DkimSigner.from_keys([key]).sign(email.as_bytes(), sender_domain="example.com")
    assert signature_tags(signed)["h"].split(":") == ["from", "subject", "x-tag", "from"]
    assert verifies(signed, {"s1._domainkey.example.com.": keys["rsa"]})


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda data: data.replace(b"Thanks for", b"Thanks  4 "), id="body"),
        pytest.param(lambda data: data.replace(b"Your receipt", b"Your invoice"), id="subject"),
        pytest.param(lambda data: data + b"P.S. wire the money\r\n", id="appended-body"),
        pytest.param(
            lambda data: data.replace(b"Subject:", b"From: boss@example.com\r\nSubject:", 1),
            id="second-from",
        ),
    ],
)
def test_tampered_messages_fail_verification(keys, tamper):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    signed = signer.sign(plain_message().as_bytes(), sender_domain="example.com")
    records = {"s1._domainkey.example.com.": keys["rsa"]}
    assert verifies(signed, records)
    assert not verifies(tamper(signed), records)


def test_relaxed_canonicalisation_tolerates_refolding_and_trailing_spaces(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    signed = signer.sign(plain_message().as_bytes(), sender_domain="example.com")
    rewritten = signed.replace(b"Subject: Your receipt", b"Subject:   Your\r\n\treceipt ")
    assert verifies(rewritten, {"s1._domainkey.example.com.": keys["rsa"]})


def test_messages_from_domains_without_a_key_are_returned_unchanged(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    data = plain_message("app@other.example").as_bytes()
    assert signer.sign(data, sender_domain="other.example") == data
    assert not signer.has_key_for("other.example")
    # a parent domain's key does not sign its subdomains, nor a key its parent
    assert signer.sign(data, sender_domain="mail.example.com") == data
    assert not signer.has_key_for("mail.example.com")
    assert not signer.has_key_for("com")
    assert not signer.has_key_for("not a domain")


def test_no_keys_signs_nothing():
    signer = DkimSigner.from_keys([])
    data = plain_message().as_bytes()
    assert signer.sign(data, sender_domain="example.com") == data
    assert signer.domains == frozenset()


def test_each_domain_is_signed_with_its_own_key_and_selector(keys):
    signer = DkimSigner.from_keys(
        [
            keys["rsa"].key("example.com", "2026a"),
            keys["ed25519"].key("shop.example.org", "mail"),
        ]
    )
    records = {
        "2026a._domainkey.example.com.": keys["rsa"],
        "mail._domainkey.shop.example.org.": keys["ed25519"],
    }
    first = signer.sign(plain_message().as_bytes(), sender_domain="example.com")
    second = signer.sign(
        plain_message("news@shop.example.org").as_bytes(), sender_domain="shop.example.org"
    )
    assert verifies(first, records)
    assert verifies(second, records)
    assert (signature_tags(first)["d"], signature_tags(first)["s"]) == ("example.com", "2026a")
    assert (signature_tags(second)["d"], signature_tags(second)["s"]) == (
        "shop.example.org",
        "mail",
    )
    assert signer.domains == {"example.com", "shop.example.org"}


def test_domains_match_case_insensitively_and_idn_as_punycode(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("Bücher.Example", "s1")])
    records = {"s1._domainkey.xn--bcher-kva.example.": keys["rsa"]}
    data = international_message("info@xn--bcher-kva.example").as_bytes()
    for sender_domain in (
        "bücher.example",
        "BÜCHER.EXAMPLE",
        "xn--bcher-kva.example",
        "Bücher.example.",
    ):
        assert signer.has_key_for(sender_domain)
        signed = signer.sign(data, sender_domain=sender_domain)
        assert signature_tags(signed)["d"] == "xn--bcher-kva.example"
        assert verifies(signed, records)


def test_a_domain_with_two_keys_gets_two_signatures(keys):
    signer = DkimSigner.from_keys(
        [keys["rsa"].key("example.com", "rsa1"), keys["ed25519"].key("example.com", "ed1")]
    )
    signed = signer.sign(multipart_message().as_bytes(), sender_domain="example.com")
    records = {
        "rsa1._domainkey.example.com.": keys["rsa"],
        "ed1._domainkey.example.com.": keys["ed25519"],
    }
    assert [signature_tags(signed, i)["a"] for i in (0, 1)] == ["rsa-sha256", "ed25519-sha256"]
    assert verifies(signed, records, index=0)
    assert verifies(signed, records, index=1)


def test_the_same_selector_twice_is_a_configuration_error(keys):
    with pytest.raises(ConfigurationError, match=NAMES_THE_KEY):
        DkimSigner.from_keys(
            [keys["rsa"].key("example.com", "s1"), keys["ed25519"].key("EXAMPLE.com", "s1")]
        )


def test_settings_from_an_env_file_build_a_working_signer(keys, tmp_path):
    entries = [
        {"domain": "example.com", "selector": "s1", "private_key_path": str(keys["rsa"].path)},
        {
            "domain": "example.org",
            "selector": "s2",
            "algorithm": "ed25519-sha256",
            "private_key": keys["ed25519"].text,
        },
    ]
    env_file = tmp_path / ".env"
    env_file.write_text(f"POSTROOM_DKIM='{json.dumps(entries)}'\n")

    settings = Settings(_env_file=env_file)

    assert [(k.domain, k.selector, k.algorithm) for k in settings.dkim] == [
        ("example.com", "s1", "rsa-sha256"),
        ("example.org", "s2", "ed25519-sha256"),
    ]
    assert settings.dkim[0].signed_headers == DEFAULT_SIGNED_HEADERS
    signer = DkimSigner.from_keys(settings.dkim)
    records = {
        "s1._domainkey.example.com.": keys["rsa"],
        "s2._domainkey.example.org.": keys["ed25519"],
    }
    for domain in ("example.com", "example.org"):
        data = plain_message(f"app@{domain}").as_bytes()
        assert verifies(signer.sign(data, sender_domain=domain), records)


def test_reading_settings_does_not_import_the_signing_library():
    code = "import sys, postroom.settings; assert 'dkim' not in sys.modules, 'dkim imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settings_default_to_no_keys():
    assert Settings(_env_file=None).dkim == []


def key_material(pair: KeyPair) -> list[str]:
    """Pieces of the private key that must never be shown: each base64 line of it."""
    lines = [line for line in pair.text.splitlines() if line and not line.startswith("-----")]
    assert lines
    return lines


def shown(error: BaseException) -> str:
    """Everything a log would show of an error: its text, its repr, its chained traceback."""
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


def test_private_keys_never_print_in_settings(keys):
    settings = Settings(
        _env_file=None,
        dkim=[{"domain": "example.com", "selector": "s1", "private_key": keys["rsa"].text}],
    )
    printed = repr(settings) + str(settings) + settings.model_dump_json() + str(settings.dkim)
    for piece in key_material(keys["rsa"]):
        assert piece not in printed
    assert "**********" in printed


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"private_key_path": "/etc/postroom/dkim.pem"}, id="both-sources"),
        pytest.param({"privat_key": "{key}"}, id="misspelt-field"),
        pytest.param({"domain": "not a domain"}, id="bad-domain"),
        pytest.param({"signed_headers": ["Subject"]}, id="from-unsigned"),
        pytest.param({"algorithm": "rsa-sha1"}, id="bad-algorithm"),
    ],
)
def test_private_keys_never_print_in_settings_errors(keys, tmp_path, entry):
    text = keys["rsa"].text
    fields = {"domain": "example.com", "selector": "s1", "private_key": text}
    fields.update({name: value.format(key=text) if isinstance(value, str) else value
                   for name, value in entry.items()})  # fmt: skip
    env_file = tmp_path / ".env"
    env_file.write_text(f"POSTROOM_DKIM='{json.dumps([fields])}'\n")
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=env_file)
    assert "dkim.0" in str(raised.value)
    for piece in key_material(keys["rsa"]):
        assert piece not in shown(raised.value)


@pytest.mark.parametrize("key_name", ["rsa", "ed25519", "ed25519-seed"])
def test_a_key_of_the_wrong_kind_names_domain_and_selector_but_not_the_key(keys, key_name):
    pair = keys[key_name]
    other = "ed25519-sha256" if pair.algorithm == "rsa-sha256" else "rsa-sha256"
    key = DkimKey(domain="example.com", selector="s1", private_key=pair.text, algorithm=other)
    with pytest.raises(ConfigurationError, match=NAMES_THE_KEY) as raised:
        DkimSigner.from_keys([key])
    for piece in key_material(pair):
        assert piece not in shown(raised.value)


def test_truncated_or_corrupt_keys_are_refused_without_showing_them(keys):
    lines = keys["rsa"].text.splitlines()
    truncated = "\n".join([*lines[:10], lines[-1]])
    corrupt = keys["rsa"].text.replace(lines[5], lines[5][::-1])
    for text in (truncated, corrupt, "just some text", keys["rsa"].text[:200]):
        key = DkimKey(domain="example.com", selector="s1", private_key=text)
        with pytest.raises(ConfigurationError, match=NAMES_THE_KEY) as raised:
            DkimSigner.from_keys([key])
        for piece in key_material(keys["rsa"]):
            assert piece not in shown(raised.value)


def test_an_unreadable_key_file_names_the_domain_selector_and_path(tmp_path):
    missing = tmp_path / "missing.pem"
    key = DkimKey(domain="example.com", selector="s1", private_key_path=missing)
    with pytest.raises(ConfigurationError) as raised:
        DkimSigner.from_keys([key])
    assert str(raised.value) == (
        f"DKIM key for selector s1 of example.com: cannot read {missing}: No such file or directory"
    )


def test_short_and_encrypted_rsa_keys_are_refused(tmp_path):
    short = rsa_pair(tmp_path, "short", bits=768)
    with pytest.raises(ConfigurationError, match="768 bits"):
        DkimSigner.from_keys([short.key("example.com", "s1")])
    encrypted = tmp_path / "encrypted.pem"
    openssl("genpkey", "-algorithm", "rsa", "-aes256", "-pass", "pass:pw", "-out", str(encrypted))
    key = DkimKey(domain="example.com", selector="s1", private_key_path=encrypted)
    with pytest.raises(ConfigurationError, match="encrypted"):
        DkimSigner.from_keys([key])


def test_crlf_and_indented_pem_text_is_accepted(keys):
    text = "\r\n".join("  " + line for line in keys["rsa"].text.splitlines())
    signer = DkimSigner.from_keys([DkimKey(domain="example.com", selector="s1", private_key=text)])
    signed = signer.sign(plain_message().as_bytes(), sender_domain="example.com")
    assert verifies(signed, {"s1._domainkey.example.com.": keys["rsa"]})


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "exactly one of private_key and private_key_path"),
        ({"private_key": "k", "private_key_path": "k.pem"}, "exactly one of"),
        ({"private_key": "k", "selector": "bad selector"}, "not a DKIM selector"),
        ({"private_key": "k", "domain": "-bad-.example"}, "not a domain name"),
        ({"private_key": "k", "signed_headers": ["To"]}, "From must be signed"),
        ({"private_key": "k", "signed_headers": ["From", "Bcc"]}, "must not be signed"),
        ({"private_key": "k", "signed_headers": ["From", "Bad:Name"]}, "not a header field"),
    ],
)
def test_dkim_key_validation(fields, problem):
    with pytest.raises(ValidationError, match=problem):
        DkimKey.model_validate({"domain": "example.com", "selector": "s1", **fields})


def test_dkim_keys_are_frozen():
    key = DkimKey(domain="Example.COM", selector="s1", private_key="k")
    assert key.domain == "example.com"
    with pytest.raises(ValidationError):
        key.selector = "s2"  # type: ignore[misc]


def test_ascii_domain():
    assert ascii_domain("Bücher.Example.") == "xn--bcher-kva.example"
    assert ascii_domain("MAIL.example.com") == "mail.example.com"
    for bad in ("", "a..b", "exa mple.com", "x" * 64 + ".com"):
        with pytest.raises(ValueError):
            ascii_domain(bad)


def test_an_unparseable_header_block_is_a_value_error_that_hides_the_content(keys):
    signer = DkimSigner.from_keys([keys["rsa"].key("example.com", "s1")])
    with pytest.raises(ValueError, match="header block") as raised:
        signer.sign(
            b"From: a@example.com\r\nsecret-token\r\n\r\nbody\r\n", sender_domain="example.com"
        )
    assert "secret-token" not in shown(raised.value)


def test_signatures_survive_an_smtp_hop(keys, smtp_sink: SmtpSink):
    signer = DkimSigner.from_keys([keys["ed25519"].key("example.com", "s1")])
    records = {"s1._domainkey.example.com.": keys["ed25519"]}
    signed = [
        signer.sign(build().as_bytes(), sender_domain="example.com")
        for build in (international_message, multipart_message, long_lines_message)
    ]
    with smtplib.SMTP("127.0.0.1", smtp_sink.port, timeout=10) as connection:
        for data in signed:
            connection.sendmail("app@example.com", ["user@example.net"], data)
    smtp_sink.wait_for(len(signed))
    for sent, received in zip(signed, smtp_sink.received, strict=True):
        assert received.data == sent
        assert verifies(received.data, records)

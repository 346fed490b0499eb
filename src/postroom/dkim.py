"""DKIM signing per sender domain: keys from settings, loaded once into a ``DkimSigner``.

A key signs mail whose From domain is exactly its ``domain`` (case-insensitive, IDN compared
as punycode). A parent domain's key is not used for its subdomains: a subdomain is signed only
when someone configured it, so no forgotten or delegated subdomain carries the parent's
signature by accident; relaxed DMARC alignment already accepts a parent key configured for
a subdomain explicitly. Several keys for one domain (RSA and Ed25519, RFC 8463) each add a
signature.

The ``dkim`` library (dkimpy, with pynacl for Ed25519) is imported only when a signer is
built, so that reading settings stays cheap.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from postroom.errors import ConfigurationError

DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]

# RFC 6376 §5.4.1's list, plus RFC 8058's one-click unsubscribe pair, which receivers only honour
# when a signature covers both. Names absent from a message are left out of its signature.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
# Headers that relays add or rewrite in transit; a signature over them would break (RFC 6376
# §5.4), and dkimpy refuses to sign them.
_NEVER_SIGNED = frozenset(
    {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"}
)
_MIN_RSA_BITS = 1024  # RFC 8301: verifiers must reject shorter RSA keys
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext: printable ASCII but ':'
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_SELECTOR_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(?P<body>[A-Za-z0-9+/=\s]*?)\s*-----END \1-----")
# DER of a PKCS#8 Ed25519 key (RFC 8410) up to the 32-byte seed: AlgorithmIdentifier with
# OID 1.3.101.112, then OCTET STRING { OCTET STRING (32) }.
_ED25519_PKCS8_SEED_PREFIX = bytes.fromhex("300506032b657004220420")


def ascii_domain(domain: str) -> str:
    """``domain`` lower-cased, in its ASCII form (punycode for IDN); ``ValueError`` if invalid."""
    name = domain.strip().removesuffix(".").lower()
    if not name.isascii():
        import idna  # only IDN needs it; keeps settings import light

        name = idna.encode(name, uts46=True).decode("ascii")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


class DkimKey(BaseModel):
    """One signing key: mail from ``domain`` is signed under ``<selector>._domainkey.<domain>``.

    The key is PEM (``openssl genrsa``, ``openssl genpkey -algorithm ed25519``) given inline as
    ``private_key`` or read from ``private_key_path``; Ed25519 keys may also be the base64 seed
    that dkimpy's ``dknewkey`` writes.
    """

    # The key's text must never reach an error message; Settings hides inputs in errors too,
    # because a nested model's errors are rendered with the outer model's config.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    domain: str
    selector: str
    private_key: SecretStr | None = None
    private_key_path: Path | None = None
    algorithm: DkimAlgorithm = "rsa-sha256"
    signed_headers: tuple[str, ...] = DEFAULT_SIGNED_HEADERS

    @field_validator("domain")
    @classmethod
    def _normalise_domain(cls, value: str) -> str:
        return ascii_domain(value)

    @field_validator("selector")
    @classmethod
    def _check_selector(cls, value: str) -> str:
        if not all(_SELECTOR_LABEL.fullmatch(label) for label in value.split(".")):
            raise ValueError(f"{value!r} is not a DKIM selector (DNS labels)")
        return value

    @field_validator("signed_headers")
    @classmethod
    def _check_signed_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _FIELD_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header field name")
            if name.lower() in _NEVER_SIGNED:
                raise ValueError(f"{name} changes in transit and must not be signed")
        if "from" not in {name.lower() for name in value}:
            raise ValueError("From must be signed (RFC 6376 §5.4)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> DkimKey:
        if (self.private_key is None) == (self.private_key_path is None):
            raise ValueError("give exactly one of private_key and private_key_path")
        return self


@dataclass(frozen=True)
class _LoadedKey:
    """A validated key in the form dkimpy signs with."""

    domain: bytes
    selector: bytes
    algorithm: bytes
    secret: bytes = field(repr=False)  # canonical PEM for RSA, base64 seed for Ed25519
    signed_headers: tuple[bytes, ...]  # lower-case, each name once


class DkimSigner:
    """Adds a ``DKIM-Signature`` to messages from domains that have a key; thread-safe."""

    def __init__(self, keys: Mapping[str, tuple[_LoadedKey, ...]]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_keys(cls, keys: Iterable[DkimKey]) -> DkimSigner:
        """Load and test-sign with every key; ``ConfigurationError`` names any bad one."""
        by_domain: dict[str, list[_LoadedKey]] = {}
        seen: set[tuple[str, str]] = set()
        for key in keys:
            ident = (key.domain, key.selector.lower())
            if ident in seen:
                raise ConfigurationError(
                    f"DKIM key for selector {key.selector} of {key.domain} is configured twice"
                )
            seen.add(ident)
            by_domain.setdefault(key.domain, []).append(_load(key))
        return cls({domain: tuple(loaded) for domain, loaded in by_domain.items()})

    @property
    def domains(self) -> frozenset[str]:
        """The ASCII domains that have at least one key."""
        return frozenset(self._keys)

    def has_key_for(self, domain: str) -> bool:
        """True when mail from ``domain`` gets signed."""
        return bool(self._keys_for(domain))

    def sign(self, data: bytes, *, sender_domain: str) -> bytes:
        """``data`` with one ``DKIM-Signature`` per key of ``sender_domain`` prepended.

        ``data`` is a whole message (CRLF line endings, as ``EmailMessage.as_bytes()`` gives
        under policy SMTP; LF input gets LF signatures). It is returned unchanged when the
        domain has no key. ``ValueError`` when its header block cannot be parsed.
        """
        keys = self._keys_for(sender_domain)
        if not keys:
            return data
        import dkim

        try:
            message = dkim.DKIM(data, linesep=_line_separator(data))
        except dkim.MessageFormatError:
            # dkimpy's text quotes the offending header line, which may be message content
            raise ValueError("the message's header block cannot be parsed for DKIM") from None
        present = [name.lower() for name, _ in message.headers]
        signatures = [_signature(message, key, present) for key in keys]
        return b"".join(signatures) + data

    def _keys_for(self, domain: str) -> tuple[_LoadedKey, ...]:
        try:
            return self._keys.get(ascii_domain(domain), ())
        except ValueError:
            return ()  # not a domain name, so no key can be configured for it


def _line_separator(data: bytes) -> bytes:
    """The line ending ``data`` uses, so that the signature header matches the message."""
    end = data.find(b"\n")
    return b"\n" if end >= 0 and data[end - 1 : end] != b"\r" else b"\r\n"


def _signature(message: Any, key: _LoadedKey, present: list[bytes]) -> bytes:
    # A name listed once covers only its last instance, so each one present is listed.
    # From is listed once more than it occurs ("over-signing", RFC 6376 §8.15): a From header
    # added in transit, which some clients would show as the author, then breaks the signature.
    # Absent headers are not listed, so relays that add Reply-To or List-* keep it valid.
    include = [name for name in key.signed_headers for _ in range(present.count(name))]
    include.append(b"from")
    signature: bytes = message.sign(
        key.selector,
        key.domain,
        key.secret,
        signature_algorithm=key.algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=include,
    )
    return signature


def _load(key: DkimKey) -> _LoadedKey:
    where = f"DKIM key for selector {key.selector} of {key.domain}"
    text = _read_key_text(key, where)
    if key.algorithm == "rsa-sha256":
        secret = _rsa_secret(text, where)
    else:
        secret = _ed25519_secret(text, where)
    loaded = _LoadedKey(
        domain=key.domain.encode("ascii"),
        selector=key.selector.encode("ascii"),
        algorithm=key.algorithm.encode("ascii"),
        secret=secret,
        signed_headers=tuple(dict.fromkeys(n.lower().encode("ascii") for n in key.signed_headers)),
    )
    _test_sign(loaded, where)
    return loaded


def _read_key_text(key: DkimKey, where: str) -> str:
    if key.private_key is not None:
        return key.private_key.get_secret_value()
    assert key.private_key_path is not None
    try:
        raw = key.private_key_path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"{where}: cannot read {key.private_key_path}: {error.strerror}"
        ) from None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"{where}: {key.private_key_path} is not a PEM or base64 text file"
        ) from None


def _pem_der(text: str) -> tuple[str, bytes] | None:
    """The label and DER bytes of the first PEM block in ``text``, or None."""
    match = _PEM.search(text)
    if match is None:
        return None
    try:
        return match.group(1), base64.b64decode("".join(match["body"].split()), validate=True)
    except binascii.Error:
        return None


def _rsa_secret(text: str, where: str) -> bytes:
    pem = _pem_der(text)
    if pem is not None and pem[0] == "ENCRYPTED PRIVATE KEY":
        raise ConfigurationError(f"{where}: the key is encrypted; store it unencrypted")
    if pem is None or pem[0] not in {"RSA PRIVATE KEY", "PRIVATE KEY"}:
        raise ConfigurationError(f"{where}: not a PEM RSA private key")
    bits = _check_rsa_numbers(pem[1], where)
    if bits < _MIN_RSA_BITS:
        raise ConfigurationError(
            f"{where}: the RSA key has {bits} bits; receivers need at least {_MIN_RSA_BITS}"
            " (2048 recommended)"
        )
    # dkimpy finds the key body between "--\n" and "\n--": re-wrap with LF whatever the source
    label = pem[0].encode("ascii")
    body = base64.encodebytes(pem[1])
    return b"-----BEGIN " + label + b"-----\n" + body + b"-----END " + label + b"-----\n"


def _check_rsa_numbers(der: bytes, where: str) -> int:
    """The modulus size of the RSA key in ``der``, after a round trip through its numbers.

    A key damaged in copying can still parse and sign, but nothing would verify its
    signatures; signing and verifying a probe with dkimpy's own primitives catches that.
    """
    from dkim.crypto import UnparsableKeyError, parse_private_key, rsa_decrypt, rsa_encrypt

    try:
        # dkimpy reads PKCS#1 and PKCS#8 alike; parsing rejects other key types early
        numbers = parse_private_key(der)
        size = (numbers["modulus"].bit_length() + 7) // 8
        probe = bytes(range(1, 33))
        intact = bytes(rsa_encrypt(rsa_decrypt(probe, numbers, size), numbers, size))
    except (UnparsableKeyError, ArithmeticError, LookupError, TypeError, ValueError):
        raise ConfigurationError(f"{where}: not a PEM RSA private key") from None
    if intact.lstrip(b"\0") != probe:
        raise ConfigurationError(f"{where}: the RSA key is damaged (its numbers do not match)")
    return int(numbers["modulus"].bit_length())


def _ed25519_secret(text: str, where: str) -> bytes:
    pem = _pem_der(text)
    if pem is not None:
        der = pem[1]
        start = der.find(_ED25519_PKCS8_SEED_PREFIX)
        seed = der[start + len(_ED25519_PKCS8_SEED_PREFIX) :][:32] if start >= 0 else b""
    else:
        # dknewkey's format: the 32-byte seed in base64 on one line
        try:
            seed = base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error:
            seed = b""
    if (pem is not None and pem[0] != "PRIVATE KEY") or len(seed) != 32:
        raise ConfigurationError(
            f"{where}: not an Ed25519 private key (PKCS#8 PEM or base64 of the 32-byte seed)"
        )
    return base64.b64encode(seed)


def _test_sign(key: _LoadedKey, where: str) -> None:
    import dkim

    probe = b"From: probe@" + key.domain + b"\r\n\r\nprobe\r\n"
    try:
        dkim.DKIM(probe).sign(
            key.selector,
            key.domain,
            key.secret,
            signature_algorithm=key.algorithm,
            include_headers=[b"from"],
        )
    except dkim.NaClNotFoundError:
        raise ConfigurationError(f"{where}: Ed25519 signing needs the pynacl package") from None
    except (dkim.DKIMException, ValueError, TypeError):
        raise ConfigurationError(f"{where}: the key cannot sign") from None

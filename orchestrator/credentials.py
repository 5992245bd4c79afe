"""A station's credentials checked before they are used: the certificate, its key and the CA that
signed it (``orchestrator init`` before it copies them, ``orchestrator doctor`` on a line)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from cloudserver.pki import Identity, identity
from nuwire.errors import ProtocolError
from nuwire.pem import load_private_key

RENEW_BEFORE = datetime.timedelta(days=30)
"""A certificate this close to its end is reported: the line stops when it expires."""


def _certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as error:
        raise ProtocolError(f"{what} {path}", "a readable file", error.strerror or str(error)) from None
    except ValueError:
        raise ProtocolError(f"{what} {path}", "a PEM certificate", "something else") from None


def examine(
    certificate: Path, key: Path, ca: Path, *, now: datetime.datetime | None = None
) -> tuple[Identity | None, list[str]]:
    """(who the certificate says it is, every problem found): each file readable and of its kind,
    the key the certificate's, the certificate signed by the CA, in its validity (and not within
    :data:`RENEW_BEFORE` of its end), a station's (OU=station) naming its line (L=)."""
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[str] = []
    try:
        leaf = _certificate(certificate, "certificate")
    except ProtocolError as error:
        return None, [str(error)]
    who = identity(leaf.public_bytes(Encoding.DER))
    try:
        private = load_private_key(key)
    except OSError as error:
        problems.append(f"key {key}: {error.strerror}")
    except ProtocolError as error:
        problems.append(f"key {key}: {error}")
    else:
        if private.public_key().public_numbers() != leaf.public_key().public_numbers():  # type: ignore[union-attr]
            problems.append(f"key {key} is not the key of certificate {certificate}")
    try:
        leaf.verify_directly_issued_by(_certificate(ca, "CA"))
    except ProtocolError as error:
        problems.append(str(error))
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"certificate {certificate} is not signed by the CA in {ca}")
    if now < leaf.not_valid_before_utc:
        problems.append(
            f"certificate {certificate} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
        )
    elif now > leaf.not_valid_after_utc:
        problems.append(f"certificate {certificate} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    elif now > leaf.not_valid_after_utc - RENEW_BEFORE:
        problems.append(f"certificate {certificate} expires on {leaf.not_valid_after_utc:%Y-%m-%d}: renew it")
    if who.role != "station":
        problems.append(f"certificate {certificate} is not a station's ({who.subject})")
    elif not who.line:
        problems.append(f"certificate {certificate} names no line (L=): the cloud refuses it")
    return who, problems

"""A development PKI for `cloudserver init`: a CA, a server certificate for 127.0.0.1 and localhost,
an admin client certificate and N station client certificates, with separate profiles (the server
certificate may only authenticate a server, client certificates only a client).

The role of a client is its certificate's organizational unit: ``admin`` or ``station``; a station
certificate names its line in its locality (``L=line-1``): the cloud lets it act only for that
line's boards and jobs. The CA's private key is written apart from the certificates the server
reads (``cloudserver init`` puts it beside the data folder, never in it): whoever can read it can
mint admin certificates. Production points the settings at its own PKI; the same rules apply.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nuwire.pem import load_private_key, private_pem

ROLES = ("admin", "station", "monitor")
VALIDITY = datetime.timedelta(days=825)


DEFAULT_LINE = "line-1"


class Identity(NamedTuple):
    subject: str
    role: str
    """'admin', 'station', or '' when the OU names neither."""
    serial: str
    """As :func:`serial_text` writes it."""
    line: str
    """A station certificate's line (its L attribute); '' when it names none."""


def _name(common_name: str, unit: str, line: str = "") -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nuprov"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
    ]
    if line:
        attributes.append(x509.NameAttribute(NameOID.LOCALITY_NAME, line))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem(key))


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_extensions(usage: x509.ObjectIdentifier) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, True, False, False, False, False), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]


def init_pki(
    folder: Path, stations: int, *, ca_key_folder: Path | None = None, line: str = DEFAULT_LINE
) -> list[Path]:
    """Write ca, server, admin and station-NN (of ``line``) certificates and keys into
    ``folder``; the CA's key into ``ca_key_folder`` (default: ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key_folder = ca_key_folder or folder
    ca_key_folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("nuprov development CA", "ca")
    ca_extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ]
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca_extensions)
    written = [folder / "ca.crt"]
    (folder / "ca.crt").write_bytes(ca.public_bytes(Encoding.PEM))
    _write_key(ca_key_folder / "ca.key", ca_key)
    server_extensions = [
        *_leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH),
        (
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        ),
    ]
    leaves = [("server", _name("localhost", "server"), server_extensions)]
    leaves.append(("admin", _name("admin", "admin"), _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)))
    leaves.append(("monitor", _name("monitor", "monitor"), _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)))
    for index in range(1, stations + 1):
        name = f"station-{index:02d}"
        leaves.append((name, _name(name, "station", line), _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)))
    for file_name, subject, extensions in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _issue(subject, key, ca_name, ca_key, extensions)
        (folder / f"{file_name}.crt").write_bytes(certificate.public_bytes(Encoding.PEM))
        _write_key(folder / f"{file_name}.key", key)
        written.append(folder / f"{file_name}.crt")
    return written


def issue_client(folder: Path, ca_key: Path, name: str, *, role: str, line: str = "") -> Path:
    """A new client certificate ``folder/name.crt`` (and its key) for ``role`` (and a station's
    ``line``), signed by the CA in ``folder/ca.crt`` with ``ca_key``."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    issuer_key = load_private_key(ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name, role, line if role == "station" else "")
    certificate = _issue(
        subject, key, ca.subject, issuer_key, _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    (folder / f"{name}.crt").write_bytes(certificate.public_bytes(Encoding.PEM))
    _write_key(folder / f"{name}.key", key)
    return folder / f"{name}.crt"


@functools.lru_cache(maxsize=4096)
def identity(der: bytes) -> Identity:
    """Who a verified client certificate is (remembered: a station sends the same one each time)."""
    certificate = x509.load_der_x509_certificate(der)
    units = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    lines = certificate.subject.get_attributes_for_oid(NameOID.LOCALITY_NAME)
    role = str(units[0].value) if units else ""
    return Identity(
        certificate.subject.rfc4514_string(),
        role if role in ROLES else "",
        serial_text(certificate.serial_number),
        str(lines[0].value) if lines and role == "station" else "",
    )


def serial_text(serial: int | str) -> str:
    """A certificate serial as upper-case hex without separators (``openssl x509 -serial``); a
    string may be hex with or without ``0x``, colons or spaces."""
    if isinstance(serial, str):
        cleaned = serial.strip().removeprefix("serial=").replace(":", "").replace(" ", "")
        serial = int(cleaned, 16)
    return f"{serial:X}"

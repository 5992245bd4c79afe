"""A development PKI for `cloudserver init`: a CA, a server certificate for 127.0.0.1 and localhost,
an admin client certificate and N station client certificates, with separate profiles (the server
certificate may only authenticate a server, client certificates only a client).

The role of a client is its certificate's organizational unit: ``admin`` or ``station``.
Production points the settings at its own PKI; the same rules apply.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nuwire.pem import private_pem

ROLES = ("admin", "station")
VALIDITY = datetime.timedelta(days=825)


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nuprov"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


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


def init_pki(folder: Path, stations: int) -> list[Path]:
    """Write ca, server, admin and station-NN certificates and keys into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("nuprov development CA", "ca")
    ca_extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ]
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca_extensions)
    written = [folder / "ca.crt"]
    (folder / "ca.crt").write_bytes(ca.public_bytes(Encoding.PEM))
    _write_key(folder / "ca.key", ca_key)
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
    for index in range(1, stations + 1):
        name = f"station-{index:02d}"
        leaves.append((name, _name(name, "station"), _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)))
    for file_name, subject, extensions in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _issue(subject, key, ca_name, ca_key, extensions)
        (folder / f"{file_name}.crt").write_bytes(certificate.public_bytes(Encoding.PEM))
        _write_key(folder / f"{file_name}.key", key)
        written.append(folder / f"{file_name}.crt")
    return written


def identity(der: bytes) -> tuple[str, str, str]:
    """(subject, role, serial) of a verified client certificate; role is '' when the OU names
    none; serial as :func:`serial_text` writes it."""
    certificate = x509.load_der_x509_certificate(der)
    units = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(units[0].value) if units else ""
    subject = certificate.subject.rfc4514_string()
    return subject, role if role in ROLES else "", serial_text(certificate.serial_number)


def serial_text(serial: int | str) -> str:
    """A certificate serial as upper-case hex without separators (``openssl x509 -serial``); a
    string may be hex with or without ``0x``, colons or spaces."""
    if isinstance(serial, str):
        cleaned = serial.strip().removeprefix("serial=").replace(":", "").replace(" ", "")
        serial = int(cleaned, 16)
    return f"{serial:X}"

"""The chain of a TLS <= 1.2 Certificate message (RFC 5246 section 7.4.2), parsed with ``cryptography``.

``opaque ASN.1Cert<1..2^24-1>; struct { ASN.1Cert certificate_list<0..2^24-1>; } Certificate;`` Each DER certificate
gives one row; one that ``cryptography`` cannot parse gives an anomaly and a row with only its position and hashes.
"""

from __future__ import annotations

import contextlib
import hashlib

import pyarrow as pa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from quaywatch.decode.base import Event, anomaly

PROTOCOL = "tls"


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


CERTIFICATE_SCHEMA = pa.schema(
    [
        _field("position", pa.int16(), "place in the chain as sent: 0 is the server's (leaf) certificate"),
        _field("length", pa.int32(), "DER size in bytes"),
        _field("version", pa.int16(), "X.509 version (1 or 3)"),
        _field("subject", pa.string(), "subject distinguished name, RFC 4514 form"),
        _field("issuer", pa.string(), "issuer distinguished name, RFC 4514 form"),
        _field("serial", pa.string(), "serial number, lower-case hex"),
        _field("not_before", pa.timestamp("us", tz="UTC"), "validity start"),
        _field("not_after", pa.timestamp("us", tz="UTC"), "validity end"),
        _field("san_dns", pa.list_(pa.string()), "subjectAltName DNS names"),
        _field("san_ip", pa.list_(pa.string()), "subjectAltName IP addresses"),
        _field("public_key_algorithm", pa.string(), "rsa, ec, dsa, ed25519, ed448 or the key's OID"),
        _field("public_key_size", pa.int32(), "key size in bits (EC: curve size)"),
        _field("public_key_curve", pa.string(), "EC: curve name"),
        _field("signature_algorithm", pa.string(), "signature algorithm name (sha256WithRSAEncryption ...) or OID"),
        _field("sha1", pa.string(), "SHA-1 of the DER, hex (the classic certificate fingerprint)"),
        _field("sha256", pa.string(), "SHA-256 of the DER, hex (Zeek's cert_chain_fps)"),
        _field("self_signed", pa.bool_(), "subject equals issuer"),
        _field("is_ca", pa.bool_(), "basicConstraints cA flag; NULL without the extension"),
    ]
)


class _Short(ValueError):
    pass


def _split_chain(body: bytes) -> tuple[list[bytes], list[Event]]:
    if len(body) < 3:
        return [], [anomaly(PROTOCOL, "bad_certificate", f"Certificate message of {len(body)} bytes")]
    total = int.from_bytes(body[:3], "big")
    events: list[Event] = []
    if total + 3 != len(body):
        events.append(anomaly(PROTOCOL, "bad_certificate", f"chain length {total} in a {len(body)}-byte message"))
    position, end, ders = 3, min(len(body), 3 + total), []
    while position < end:
        if position + 3 > end:
            events.append(anomaly(PROTOCOL, "bad_certificate", f"certificate length cut at offset {position}"))
            break
        length = int.from_bytes(body[position : position + 3], "big")
        if position + 3 + length > end:
            events.append(anomaly(PROTOCOL, "bad_certificate", f"certificate at offset {position} runs past the chain"))
            break
        ders.append(body[position + 3 : position + 3 + length])
        position += 3 + length
    return ders, events


def _key(certificate: x509.Certificate, row: dict[str, object]) -> None:
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        row["public_key_algorithm"], row["public_key_size"] = "rsa", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        row["public_key_algorithm"], row["public_key_size"] = "ec", key.curve.key_size
        row["public_key_curve"] = key.curve.name
    elif isinstance(key, dsa.DSAPublicKey):
        row["public_key_algorithm"], row["public_key_size"] = "dsa", key.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        row["public_key_algorithm"], row["public_key_size"] = "ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        row["public_key_algorithm"], row["public_key_size"] = "ed448", 456
    else:
        row["public_key_algorithm"] = type(key).__name__


def _one(der: bytes, position: int) -> tuple[dict[str, object], list[Event]]:
    row: dict[str, object] = {
        "position": position,
        "length": len(der),
        "sha1": hashlib.sha1(der, usedforsecurity=False).hexdigest(),
        "sha256": hashlib.sha256(der).hexdigest(),
    }
    events: list[Event] = []
    try:
        certificate = x509.load_der_x509_certificate(der)
    except Exception as error:  # cryptography raises ValueError and others on malformed DER
        return row, [anomaly(PROTOCOL, "unparsable_certificate", f"certificate {position}: {error}")]
    # Each attribute is decoded lazily and may fail on its own; keep whatever can be read.
    steps = {
        "version": lambda: certificate.version.value + 1,
        "subject": lambda: certificate.subject.rfc4514_string(),
        "issuer": lambda: certificate.issuer.rfc4514_string(),
        "serial": lambda: format(certificate.serial_number, "x"),
        "not_before": lambda: certificate.not_valid_before_utc,
        "not_after": lambda: certificate.not_valid_after_utc,
        "signature_algorithm": lambda: (
            certificate.signature_algorithm_oid._name
            if certificate.signature_algorithm_oid._name != "Unknown OID"
            else certificate.signature_algorithm_oid.dotted_string
        ),
        "self_signed": lambda: certificate.subject == certificate.issuer,
    }
    for name, step in steps.items():
        try:
            row[name] = step()
        except Exception as error:
            events.append(anomaly(PROTOCOL, "certificate_field", f"certificate {position} {name}: {error}"))
    try:
        _key(certificate, row)
    except Exception as error:
        events.append(anomaly(PROTOCOL, "certificate_field", f"certificate {position} public key: {error}"))
    try:
        extensions = certificate.extensions
        try:
            names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            row["san_dns"] = [str(n) for n in names.get_values_for_type(x509.DNSName)]
            row["san_ip"] = [str(n) for n in names.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            pass
        with contextlib.suppress(x509.ExtensionNotFound):
            row["is_ca"] = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except Exception as error:
        events.append(anomaly(PROTOCOL, "certificate_field", f"certificate {position} extensions: {error}"))
    return row, events


def certificate_rows(body: bytes) -> tuple[list[dict[str, object]], list[Event]]:
    """Rows of the chain in a Certificate message body, and anomalies; never raises."""
    ders, events = _split_chain(body)
    rows = []
    for position, der in enumerate(ders):
        row, problems = _one(der, position)
        rows.append(row)
        events += problems
    return rows, events

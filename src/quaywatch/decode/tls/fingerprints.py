"""TLS client and server fingerprints: JA3/JA3S (Salesforce) and JA4/JA4S (FoxIO).

JA3 (https://github.com/salesforce/ja3): ``SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats``,
decimal values joined by ``-``, GREASE values (RFC 8701) removed from every list, MD5 of that string. JA3S:
``SSLVersion,Cipher,Extensions`` of the ServerHello.

JA4 (FoxIO, technical_details/JA4.md in FoxIO-LLC/ja4): ``a_b_c`` where ``a`` is the protocol (``t`` for TLS over
TCP), the two-character version (highest non-GREASE supported_versions entry, else the legacy version), ``d`` or
``i`` (SNI present or not), the two-digit counts of ciphers and extensions (GREASE removed, capped at 99) and the first
and last characters of the first ALPN value (``00`` if none); ``b`` is the first 12 hex digits of the SHA-256 of the
sorted four-digit hex cipher codes joined by ``,``; ``c`` the same of the sorted extension codes without SNI (0x0000)
and ALPN (0x0010), then ``_`` and the signature algorithms in the order sent. An empty list hashes to ``000000000000``.
JA4S: ``t``, version, extension count, ALPN chosen ``_`` chosen cipher in hex ``_`` SHA-256 prefix of the extension
codes in the order sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_HASH = "000000000000"

#: JA4 two-character version codes.
JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
SNI = 0x0000
ALPN = 0x0010


def is_grease(value: int) -> bool:
    """RFC 8701 section 2: 0x0A0A, 0x1A1A, ... 0xFAFA (both bytes equal, low nibble 0xA)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _dashed(values: Sequence[int]) -> str:
    return "-".join(str(v) for v in values if not is_grease(v))


def ja3(
    version: int,
    ciphers: Sequence[int],
    extensions: Sequence[int],
    groups: Sequence[int],
    point_formats: Sequence[int],
) -> tuple[str, str]:
    text = ",".join(
        [str(version), _dashed(ciphers), _dashed(extensions), _dashed(groups), "-".join(map(str, point_formats))]
    )
    return text, hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def ja3s(version: int, cipher: int, extensions: Sequence[int]) -> tuple[str, str]:
    text = f"{version},{cipher},{_dashed(extensions)}"
    return text, hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else EMPTY_HASH


def _alpn_code(alpn: bytes | None) -> str:
    """First and last character of the ALPN value; its hex digits instead if either is not alphanumeric."""
    if not alpn:
        return "00"
    first, last = chr(alpn[0]), chr(alpn[-1])
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    return f"{alpn[0]:02x}"[0] + f"{alpn[-1]:02x}"[1]


def _version_code(legacy: int, supported: Sequence[int]) -> str:
    offered = [v for v in supported if not is_grease(v)]
    return JA4_VERSIONS.get(max(offered) if offered else legacy, "00")


def ja4(
    legacy_version: int,
    supported_versions: Sequence[int],
    has_sni: bool,
    ciphers: Sequence[int],
    extensions: Sequence[int],
    first_alpn: bytes | None,
    signature_algorithms: Sequence[int],
    protocol: str = "t",
) -> tuple[str, str]:
    """The JA4 fingerprint and its raw (``JA4_r``) form."""
    suites = sorted(c for c in ciphers if not is_grease(c))
    present = [e for e in extensions if not is_grease(e)]
    head = (
        f"{protocol}{_version_code(legacy_version, supported_versions)}{'d' if has_sni else 'i'}"
        f"{min(len(suites), 99):02d}{min(len(present), 99):02d}{_alpn_code(first_alpn)}"
    )
    cipher_text = ",".join(f"{c:04x}" for c in suites)
    extension_text = ",".join(f"{e:04x}" for e in sorted(e for e in present if e not in (SNI, ALPN)))
    algorithms = ",".join(f"{s:04x}" for s in signature_algorithms if not is_grease(s))
    c_text = f"{extension_text}_{algorithms}" if algorithms else extension_text
    raw = f"{head}_{cipher_text}_{c_text}"
    return f"{head}_{_hash12(cipher_text)}_{_hash12(extension_text and c_text)}", raw


def ja4s(
    legacy_version: int,
    selected_version: int | None,
    cipher: int,
    extensions: Sequence[int],
    alpn: bytes | None,
    protocol: str = "t",
) -> tuple[str, str]:
    """The JA4S fingerprint and its raw (``JA4S_r``) form."""
    version = JA4_VERSIONS.get(selected_version if selected_version is not None else legacy_version, "00")
    head = f"{protocol}{version}{min(len(extensions), 99):02d}{_alpn_code(alpn)}"
    extension_text = ",".join(f"{e:04x}" for e in extensions)
    return f"{head}_{cipher:04x}_{_hash12(extension_text)}", f"{head}_{cipher:04x}_{extension_text}"

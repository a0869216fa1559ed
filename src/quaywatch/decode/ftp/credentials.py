"""The shared ``cleartext_credentials`` table: logins seen in clear by the FTP and telnet decoders.

One row per login attempt: the protocol, the user name as received, whether a password was sent and its length
(the password itself is never stored) and, where the protocol says so, whether the login succeeded. Detection
D11 (cleartext and default credentials) reads it; a default user name (``admin``, ``root``, ``anonymous``) or a
short password shows here without any password being kept.

Decoders that fill it list :data:`TABLE` with :data:`SCHEMA` in their ``tables`` (the same schema object, so
the pipeline creates the table once) and emit rows with :func:`credential`.
"""

from __future__ import annotations

import pyarrow as pa

from quaywatch.decode.base import Event

TABLE = "cleartext_credentials"


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("protocol", pa.string(), "decoder that saw the login: ftp, telnet"),
        _field("user_name", pa.string(), "user name as received (backslash-escaped); null if none was seen"),
        _field("password_present", pa.bool_(), "a password was sent (it is never stored)"),
        _field("password_length", pa.int32(), "its length in octets (telnet: characters typed, minus erasures)"),
        _field(
            "success", pa.bool_(), "FTP: true on 230/202, false on 530; telnet: false on a failure message; else null"
        ),
        _field(
            "evidence",
            pa.string(),
            "what decided success: the FTP reply code and text, the telnet failure text, or null",
        ),
    ]
)


def credential(
    protocol: str,
    user_name: str | None,
    password_length: int | None,
    success: bool | None,
    evidence: str | None = None,
) -> Event:
    """A login attempt; ``password_length`` None means no password was sent."""
    return Event(
        TABLE,
        "login",
        {
            "protocol": protocol,
            "user_name": user_name,
            "password_present": password_length is not None,
            "password_length": password_length,
            "success": success,
            "evidence": evidence,
        },
    )

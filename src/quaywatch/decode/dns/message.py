"""One DNS message (RFC 1035 section 4): header, questions, resource records, EDNS (RFC 6891).

Pure functions over bytes; nothing raises. Faults are returned as ``(code, detail)`` pairs and parsing keeps what
it read before the fault.

Names are text in which every byte outside 0x21-0x7e, and the dot and backslash inside a label, is written
``\\xNN`` (two lower-case hex digits), the way Zeek escapes non-printable bytes in its logs. A name is therefore
lossless: the labels are the pieces between unescaped dots and their bytes are recovered by undoing the escapes.
The root (empty) name is written ``"."``; a label that is a dot is ``\x2e``, so this is unambiguous.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

HEADER_LENGTH = 12
#: RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, a label at most 63.
MAXIMUM_NAME = 255
MAXIMUM_LABEL = 63
#: Compression pointers followed for one name before it is declared a loop (a name has at most 127 labels).
MAXIMUM_POINTERS = 128
#: Resource records kept per message (answer lists); counts beyond this are parsed no further.
MAXIMUM_RECORDS = 512
ROOT = "."

OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
#: Opcodes a probe accepts (RFC 1035, RFC 1996 NOTIFY, RFC 2136 UPDATE).
PROBE_OPCODES = frozenset({0, 1, 2, 4, 5})
#: IANA DNS RCODEs (RFC 1035, 2136, 6891, 8490, 2845, 2930, 4635, 7873); 16 is BADVERS with EDNS (BADSIG in TSIG).
RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    11: "DSOTYPENI",
    16: "BADVERS",
    17: "BADKEY",
    18: "BADTIME",
    19: "BADMODE",
    20: "BADNAME",
    21: "BADALG",
    22: "BADTRUNC",
    23: "BADCOOKIE",
}
#: IANA resource record TYPEs (the ones seen in practice; others are named TYPEnnn as in RFC 3597).
TYPES = {
    1: "A",
    2: "NS",
    3: "MD",
    4: "MF",
    5: "CNAME",
    6: "SOA",
    7: "MB",
    8: "MG",
    9: "MR",
    10: "NULL",
    11: "WKS",
    12: "PTR",
    13: "HINFO",
    14: "MINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    18: "AFSDB",
    24: "SIG",
    25: "KEY",
    28: "AAAA",
    29: "LOC",
    33: "SRV",
    35: "NAPTR",
    36: "KX",
    37: "CERT",
    39: "DNAME",
    41: "OPT",
    42: "APL",
    43: "DS",
    44: "SSHFP",
    45: "IPSECKEY",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    49: "DHCID",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    53: "SMIMEA",
    55: "HIP",
    59: "CDS",
    60: "CDNSKEY",
    61: "OPENPGPKEY",
    62: "CSYNC",
    63: "ZONEMD",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    108: "EUI48",
    109: "EUI64",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    253: "MAILB",
    254: "MAILA",
    255: "ANY",
    256: "URI",
    257: "CAA",
    32768: "TA",
    32769: "DLV",
}
CLASSES = {1: "IN", 2: "CS", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
OPT = 41
#: Types whose RDATA is one (compressible) domain name (RFC 1035 section 3.3, RFC 6672 DNAME).
NAME_TYPES = frozenset({2, 3, 4, 5, 7, 8, 9, 12, 39})

Fault = tuple[str, str]


def type_name(code: int) -> str:
    return TYPES.get(code) or f"TYPE{code}"


def class_name(code: int) -> str:
    return CLASSES.get(code) or f"CLASS{code}"


def rcode_name(code: int) -> str:
    return RCODES.get(code) or f"RCODE{code}"


def opcode_name(code: int) -> str:
    return OPCODES.get(code) or f"OPCODE{code}"


_ESCAPED = [f"\\x{b:02x}" if b < 0x21 or b > 0x7E or b in (0x2E, 0x5C) else chr(b) for b in range(256)]


def escape(label: bytes) -> str:
    """A label (or character-string) as text: bytes outside 0x21-0x7e, '.' and '\\' become ``\\xNN``."""
    return "".join([_ESCAPED[b] for b in label])


@dataclass(slots=True)
class Name:
    labels: list[bytes] = field(default_factory=list)
    #: Offset just after the name where it started (after the first pointer, if any).
    end: int = 0
    fault: Fault | None = None
    #: After a fault, the name's end is still known (it was reached through a pointer): parsing can go on.
    resumable: bool = True

    @property
    def text(self) -> str:
        return ".".join(escape(label) for label in self.labels) if self.labels else ROOT

    @property
    def raw(self) -> bytes:
        return b".".join(self.labels)

    @property
    def length(self) -> int:
        """Octets of the name in presentation form without escapes (labels plus the dots between them)."""
        return len(self.raw)


def read_name(message: bytes, offset: int) -> Name:
    """Read a possibly compressed name; a pointer loop, a pointer or label out of the message is a fault."""
    name = Name()
    position = offset
    end = -1
    jumps = 0
    wire = 0
    visited: set[int] = set()
    size = len(message)
    while True:
        if position >= size:
            name.fault = ("truncated_name", f"name at offset {offset} runs past the end of the message ({size})")
            break
        length = message[position]
        kind = length & 0xC0
        if kind == 0xC0:
            if position + 1 >= size:
                name.fault = ("truncated_name", f"compression pointer at offset {position} cut short")
                break
            target = ((length & 0x3F) << 8) | message[position + 1]
            if end < 0:
                end = position + 2
            jumps += 1
            if target >= size:
                name.fault = ("pointer_out_of_message", f"pointer at offset {position} to {target} of {size}")
                break
            if jumps > MAXIMUM_POINTERS or target in visited:
                name.fault = ("pointer_loop", f"compression pointers loop (offset {position} to {target})")
                break
            visited.add(target)
            position = target
            continue
        if kind:
            name.fault = ("bad_label_type", f"label type 0x{length:02x} at offset {position} (RFC 6891 section 5)")
            break
        if length == 0:
            position += 1
            break
        if position + 1 + length > size:
            name.fault = ("truncated_name", f"label of {length} octets at offset {position} runs past the end")
            break
        name.labels.append(message[position + 1 : position + 1 + length])
        wire += length + 1
        position += 1 + length
        if jumps and len(name.labels) > 127:  # without pointers the name ends in the message: read on to its end
            name.fault = ("name_too_long", f"more than 127 labels through pointers in the name at offset {offset}")
            break
    name.end = end if end >= 0 else position
    name.resumable = name.fault is None or end >= 0 or name.fault[0] == "name_too_long"
    if name.fault is None and wire + 1 > MAXIMUM_NAME:
        name.fault = ("name_too_long", f"name at offset {offset} is {wire + 1} octets (RFC 1035 section 2.3.4: 255)")
    return name


@dataclass(slots=True)
class Question:
    name: Name
    qtype: int
    qclass: int


@dataclass(slots=True)
class Record:
    section: int  # 1 answer, 2 authority, 3 additional
    name: Name
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes
    data: str


@dataclass(slots=True)
class Message:
    id: int
    flags: int
    counts: tuple[int, int, int, int]
    questions: list[Question] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: The question section was read in full (the probe's condition).
    questions_complete: bool = False

    @property
    def response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def header(data: bytes) -> tuple[int, int, tuple[int, int, int, int]] | None:
    if len(data) < HEADER_LENGTH:
        return None
    counts = (
        int.from_bytes(data[4:6], "big"),
        int.from_bytes(data[6:8], "big"),
        int.from_bytes(data[8:10], "big"),
        int.from_bytes(data[10:12], "big"),
    )
    return int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big"), counts


def _string(data: bytes, position: int, end: int) -> tuple[str | None, int]:
    """A <character-string> (RFC 1035 section 3.3) in quotes, escaped; None if it runs past ``end``."""
    length = data[position]
    if position + 1 + length > end:
        return None, end
    return '"' + escape(data[position + 1 : position + 1 + length]) + '"', position + 1 + length


def render(message: bytes, rtype: int, start: int, end: int, faults: list[Fault]) -> str:
    """RDATA in presentation form for common types; the hex of the RDATA for the others or when it does not parse."""
    rdata = message[start:end]
    length = end - start

    def name_at(offset: int, last: bool) -> Name:
        """A name inside the RDATA: what precedes its first pointer must lie in the RDATA (and end it if last)."""
        name = read_name(message, offset)
        if name.fault is None and (name.end > end or (last and name.end != end)):
            name.fault = ("bad_rdata", f"{type_name(rtype)} name at offset {offset} does not fit its RDATA")
        return name

    if rtype == 1 and length == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == 28 and length == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in NAME_TYPES:
        name = name_at(start, True)
        if name.fault is None:
            return name.text
        faults.append(name.fault)
    elif rtype == 15 and length >= 3:
        name = name_at(start + 2, True)
        if name.fault is None:
            return f"{int.from_bytes(rdata[:2], 'big')} {name.text}"
        faults.append(name.fault)
    elif rtype == 33 and length >= 7:
        name = name_at(start + 6, True)
        if name.fault is None:
            numbers = [int.from_bytes(rdata[i : i + 2], "big") for i in (0, 2, 4)]
            return " ".join(map(str, numbers)) + " " + name.text
        faults.append(name.fault)
    elif rtype == 6:
        mname = name_at(start, False)
        rname = name_at(mname.end, False) if mname.fault is None else mname
        if rname.fault is None and rname.end + 20 == end:
            numbers = [int.from_bytes(message[i : i + 4], "big") for i in range(rname.end, end, 4)]
            return f"{mname.text} {rname.text} " + " ".join(map(str, numbers))
        faults.append(rname.fault or ("bad_rdata", f"SOA RDATA at offset {start} is not 2 names and 20 octets"))
    elif rtype in (16, 99):
        strings: list[str] = []
        position = start
        while position < end:
            text, position = _string(message, position, end)
            if text is None:
                faults.append(("bad_rdata", f"TXT character-string at offset {start} runs past its RDATA"))
                return rdata.hex()
            strings.append(text)
        return " ".join(strings)
    if rtype in (1, 28):
        faults.append(("bad_rdata", f"{type_name(rtype)} RDATA of {length} octets at offset {start}"))
    return rdata.hex()


def parse(data: bytes) -> Message | None:
    """The message in ``data``, or None if there are fewer than 12 octets (no header)."""
    parsed = header(data)
    if parsed is None:
        return None
    message = Message(*parsed)
    qd, an, ns, ar = message.counts
    position = HEADER_LENGTH
    size = len(data)
    for index in range(qd):
        if index >= MAXIMUM_RECORDS:
            message.faults.append(("too_many_records", f"{qd} questions; the first {MAXIMUM_RECORDS} are read"))
            return message
        name = read_name(data, position)
        if name.fault is not None:
            message.faults.append(name.fault)
            if not name.resumable:
                return message
        if name.end + 4 > size:
            message.faults.append(("truncated", f"question {index + 1} of {qd} cut short at offset {name.end}"))
            return message
        qtype = int.from_bytes(data[name.end : name.end + 2], "big")
        qclass = int.from_bytes(data[name.end + 2 : name.end + 4], "big")
        message.questions.append(Question(name, qtype, qclass))
        position = name.end + 4
    message.questions_complete = True
    for section, count in ((1, an), (2, ns), (3, ar)):
        for index in range(count):
            if len(message.records) >= MAXIMUM_RECORDS:
                message.faults.append(("too_many_records", f"more than {MAXIMUM_RECORDS} resource records"))
                return message
            name = read_name(data, position)
            if name.fault is not None:
                message.faults.append(name.fault)
                if not name.resumable:
                    return message
            if name.end + 10 > size:
                message.faults.append(("truncated", f"record {index + 1} of section {section} cut short"))
                return message
            fixed = data[name.end : name.end + 10]
            rtype = int.from_bytes(fixed[0:2], "big")
            rclass = int.from_bytes(fixed[2:4], "big")
            ttl = int.from_bytes(fixed[4:8], "big")
            length = int.from_bytes(fixed[8:10], "big")
            start = name.end + 10
            end = start + length
            if end > size:
                message.faults.append(("truncated", f"RDATA of {length} octets at offset {start} runs past the end"))
                return message
            if rtype == OPT:
                rendered = data[start:end].hex()
                if section != 3 or name.labels:
                    message.faults.append(("misplaced_opt", "OPT record outside the additional section or not at root"))
                elif any(record.rtype == OPT and record.section == 3 for record in message.records):
                    message.faults.append(("multiple_opt", "more than one OPT record (RFC 6891 section 6.1.1)"))
            else:
                rendered = render(data, rtype, start, end, message.faults)
            message.records.append(Record(section, name, rtype, rclass, ttl, data[start:end], rendered))
            position = end
    if position < size:
        message.faults.append(("trailing_data", f"{size - position} octets after the last record"))
    return message


def netbios(labels: list[bytes]) -> bool:
    """A NetBIOS name (RFC 1001 section 14.1): the first label is 32 octets in 'A'-'P'. NBNS and LLMNR share
    DNS's message format, but NBNS (UDP 137) is a different protocol and is left alone."""
    return bool(labels) and len(labels[0]) == 32 and all(0x41 <= b <= 0x50 for b in labels[0])


def plausible(data: bytes) -> bool:
    """The probe: a header with a known opcode, counts that fit the length, and a question section that parses.

    A message without questions (mDNS announcements, some NOTIFY and UPDATE answers) must be a response whose
    first resource record parses. NetBIOS name service messages are refused (:func:`netbios`).
    """
    parsed = header(data)
    if parsed is None:
        return False
    _, flags, (qd, an, ns, ar) = parsed
    if ((flags >> 11) & 0xF) not in PROBE_OPCODES:
        return False
    if qd + an + ns + ar == 0 or qd > 256:
        return False
    if not flags & 0x0200 and qd * 5 + (an + ns + ar) * 11 > len(data) - HEADER_LENGTH:
        return False  # more records than the octets can hold (a truncated message, TC, may say more than it has)
    if not flags & 0x8000 and flags & 0x000F:
        return False  # a query carries no response code
    if qd == 0:
        if not flags & 0x8000:
            return False
        name = read_name(data, HEADER_LENGTH)
        if name.fault is not None or name.end + 10 > len(data) or netbios(name.labels):
            return False
        length = int.from_bytes(data[name.end + 8 : name.end + 10], "big")
        return name.end + 10 + length <= len(data)
    position = HEADER_LENGTH
    for index in range(qd):
        name = read_name(data, position)
        if index == 0 and netbios(name.labels):
            return False
        if (name.fault is not None and not name.resumable) or name.end + 4 > len(data):
            return False
        qclass = int.from_bytes(data[name.end + 2 : name.end + 4], "big") & 0x7FFF
        if qclass not in CLASSES:
            return False
        position = name.end + 4
    return True

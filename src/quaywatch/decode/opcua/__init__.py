"""OPC UA binary over TCP (UA TCP + UA Secure Conversation, port 4840): framing, chunks, services.

One ``opcua`` row per message: connection messages (HEL, ACK, ERR, RHE) and every secure-conversation message
(OPN, CLO, MSG) once its chunks are reassembled. When the channel's security policy is None the body is decoded:
service, request/response header, and the parameters of the services that matter for monitoring, with
``opcua_session`` (CreateSession, ActivateSession, CloseSession), ``opcua_item`` (one row per node read, written,
browsed or monitored and per method called, and per result) and ``opcua_endpoint`` (endpoints a server offers)
rows. Signed or encrypted channels give rows marked ``encrypted`` with the plaintext headers only.
"""

from __future__ import annotations

import re
import struct
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.opcua.constants import (
    CHUNK_TYPES,
    CONNECTION_MESSAGES,
    EVENT_TYPES,
    HEADER_SIZE,
    MAXIMUM_CHUNK_SIZE,
    MINIMUM_SIZE,
    SECURITY_POLICY_NONE,
    SERVICES,
    WRITE_SERVICES,
    status_name,
)
from quaywatch.decode.opcua.datatypes import Malformed, Reader
from quaywatch.decode.opcua.services import Body, parse_body, thumbprint

PROTOCOL = "opcua"
SESSION_TABLE = "opcua_session"
ITEM_TABLE = "opcua_item"
ENDPOINT_TABLE = "opcua_endpoint"

#: Requests remembered for pairing with their responses; the oldest is forgotten beyond this.
MAXIMUM_PENDING = 4096
#: Request items (node ids) remembered in all for copying onto result rows; beyond, results go without them.
MAXIMUM_PENDING_ITEMS = 100_000
#: What a result row takes from the request item at the same position.
REQUEST_ITEM_FIELDS = ("node_id", "attribute_id", "attribute", "index_range", "object_id", "method_id")
#: Partly received multi-chunk messages per direction; the oldest is dropped (with an anomaly) beyond this.
MAXIMUM_PARTIAL = 64
#: Chunks and bytes of one reassembled message.
MAXIMUM_CHUNKS = 4096
MAXIMUM_MESSAGE_SIZE = 1 << 26
#: Secure channels whose security policy is remembered.
MAXIMUM_CHANNELS = 256

#: Where a message header can start: a known type followed by a chunk type that type allows.
HEADER_PATTERN = re.compile(rb"(?:HEL|ACK|ERR|RHE)F|(?:OPN|CLO|MSG)[FCA]")
_SIZE = struct.Struct("<I")
_HELLO = struct.Struct("<5I")
_SEQUENCE = struct.Struct("<II")

Row = dict[str, object]


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


TIMESTAMP = pa.timestamp("us", tz="UTC")
USER_TOKEN = pa.struct(
    [
        pa.field("policy_id", pa.string()),
        pa.field("token_type", pa.string()),
        pa.field("issued_token_type", pa.string()),
        pa.field("issuer_endpoint_url", pa.string()),
        pa.field("security_policy_uri", pa.string()),
    ]
)

MESSAGE_SCHEMA = pa.schema(
    [
        _field("message_type", pa.string(), "UA TCP message type: HEL, ACK, ERR, RHE, OPN, CLO or MSG"),
        _field("chunk_type", pa.string(), "chunk type of the last chunk: F final, C intermediate, A abort"),
        _field("chunk_count", pa.int32(), "chunks reassembled into this message"),
        _field("message_size", pa.int64(), "bytes of all its chunks, headers included"),
        _field("protocol_version", pa.int64(), "HEL/ACK, OpenSecureChannel: protocol version"),
        _field("receive_buffer_size", pa.int64(), "HEL/ACK: largest chunk the sender accepts"),
        _field("send_buffer_size", pa.int64(), "HEL/ACK: largest chunk the sender will send"),
        _field("max_message_size", pa.int64(), "HEL/ACK: largest message the sender accepts (0 no limit)"),
        _field("max_chunk_count", pa.int64(), "HEL/ACK: most chunks per message the sender accepts (0 no limit)"),
        _field("endpoint_url", pa.string(), "HEL, RHE, GetEndpoints/FindServers request: endpoint URL, as received"),
        _field("server_uri", pa.string(), "RHE: application URI of the server connecting back, as received"),
        _field("error_code", pa.int64(), "ERR and abort chunks: status code of the error"),
        _field("error", pa.string(), "ERR and abort chunks: name of the status code"),
        _field("reason", pa.string(), "ERR and abort chunks: reason text, as received"),
        _field("secure_channel_id", pa.int64(), "OPN/CLO/MSG: secure channel id (0 in the first OPN request)"),
        _field("security_policy_uri", pa.string(), "OPN: security policy URI (…#None: no signing or encryption)"),
        _field("sender_certificate_length", pa.int32(), "OPN: sender certificate length (-1 absent)"),
        _field("sender_certificate_thumbprint", pa.string(), "OPN: SHA-1 of the sender certificate, hex"),
        _field("receiver_certificate_thumbprint", pa.string(), "OPN: thumbprint of the receiver certificate, hex"),
        _field("security_token_id", pa.int64(), "CLO/MSG: token id of the symmetric security header"),
        _field("sequence_number", pa.int64(), "sequence number (of the last chunk)"),
        _field("request_id", pa.int64(), "request id: pairs a response with its request"),
        _field(
            "encrypted", pa.bool_(), "body signed/encrypted (policy not None): not decoded; NULL when no OPN was seen"
        ),
        _field("service_node_id", pa.string(), "type NodeId of the body, string form (i=631)"),
        _field("service_type_id", pa.int32(), "numeric type id of the body in namespace 0"),
        _field("service", pa.string(), "service message name (ReadRequest, WriteResponse, ServiceFault...)"),
        _field("writes", pa.bool_(), "a request that changes server state: Write, Call, node management, history"),
        _field("authentication_token", pa.string(), "request header: session authentication token (NodeId)"),
        _field("header_timestamp", TIMESTAMP, "request/response header timestamp: the sender's clock"),
        _field("request_handle", pa.int64(), "request/response header: request handle"),
        _field("return_diagnostics", pa.int64(), "request header: diagnostics bit mask asked for"),
        _field("audit_entry_id", pa.string(), "request header: audit entry id, as received"),
        _field("timeout_hint", pa.int64(), "request header: timeout hint in milliseconds"),
        _field("status_code", pa.int64(), "response header: service result"),
        _field("status", pa.string(), "response header: service result name (Good, BadNodeIdUnknown...)"),
        _field("request_type", pa.string(), "OpenSecureChannel request: Issue or Renew"),
        _field("security_mode", pa.string(), "OpenSecureChannel request: None, Sign or SignAndEncrypt"),
        _field("requested_lifetime", pa.int64(), "OpenSecureChannel request: token lifetime asked, ms"),
        _field("revised_lifetime", pa.int64(), "OpenSecureChannel response: token lifetime granted, ms"),
        _field("token_channel_id", pa.int64(), "OpenSecureChannel response: channel id of the security token"),
        _field("token_id", pa.int64(), "OpenSecureChannel response: security token id"),
        _field("item_count", pa.int32(), "operations in the message: nodes, methods, items, results, endpoints"),
        _field("max_age", pa.float64(), "Read request: maximum age of values, ms"),
        _field("timestamps_to_return", pa.string(), "Read/CreateMonitoredItems request: Source, Server, Both..."),
        _field("view_id", pa.string(), "Browse request: view NodeId"),
        _field("max_references", pa.int64(), "Browse request: most references per node asked"),
        _field("release_continuation_points", pa.bool_(), "BrowseNext request: release instead of continue"),
        _field("subscription_id", pa.int64(), "CreateSubscription response, CreateMonitoredItems, Publish response"),
        _field("publishing_interval", pa.float64(), "CreateSubscription: publishing interval asked/granted, ms"),
        _field("publishing_enabled", pa.bool_(), "CreateSubscription request: publishing enabled"),
        _field("matched", pa.bool_(), "responses: the request with this request id, of the same service, was seen"),
        _field("latency", pa.float64(), "responses: seconds since the request"),
        _field("malformed", pa.string(), "why the message contradicts the specification (also an anomaly row)"),
    ]
)

SESSION_SCHEMA = pa.schema(
    [
        _field("service", pa.string(), "CreateSession, ActivateSession or CloseSession request/response"),
        _field("request_id", pa.int64(), "request id of the message (joins opcua)"),
        _field("application_uri", pa.string(), "CreateSession request: client application URI, as received"),
        _field("product_uri", pa.string(), "CreateSession request: client product URI, as received"),
        _field("application_name", pa.string(), "CreateSession request: client application name, as received"),
        _field("application_type", pa.string(), "CreateSession request: Server, Client, ClientAndServer..."),
        _field("gateway_server_uri", pa.string(), "CreateSession request: gateway server URI"),
        _field("discovery_profile_uri", pa.string(), "CreateSession request: discovery profile URI"),
        _field("discovery_urls", pa.list_(pa.string()), "CreateSession request: client discovery URLs"),
        _field("server_uri", pa.string(), "CreateSession request: server application URI asked for"),
        _field("endpoint_url", pa.string(), "CreateSession request: endpoint URL the client used"),
        _field("session_name", pa.string(), "CreateSession request: session name, as received"),
        _field("client_nonce_length", pa.int32(), "CreateSession request: client nonce length (-1 absent)"),
        _field("certificate_length", pa.int32(), "client/server/X509 identity certificate length (-1 absent)"),
        _field("certificate_thumbprint", pa.string(), "SHA-1 of that certificate, hex"),
        _field("session_timeout", pa.float64(), "CreateSession: session timeout asked/granted, ms"),
        _field("max_message_size", pa.int64(), "CreateSession: max response (request) / request (response) size"),
        _field("session_id", pa.string(), "CreateSession response: session NodeId"),
        _field("authentication_token", pa.string(), "CreateSession response: token later requests carry"),
        _field("server_nonce_length", pa.int32(), "Create/ActivateSession response: server nonce length"),
        _field("endpoint_count", pa.int32(), "CreateSession response: endpoints returned (rows in opcua_endpoint)"),
        _field("signature_algorithm", pa.string(), "client/server signature algorithm URI"),
        _field("locale_ids", pa.list_(pa.string()), "ActivateSession request: locales asked for"),
        _field("identity_token", pa.string(), "ActivateSession request: AnonymousIdentityToken, UserName..., X509..."),
        _field("policy_id", pa.string(), "ActivateSession request: user token policy id"),
        _field("user_name", pa.string(), "ActivateSession request, UserName token: user name, as received"),
        _field("password_present", pa.bool_(), "UserName token: a password was sent (the password is never kept)"),
        _field("encryption_algorithm", pa.string(), "UserName/Issued token: encryption algorithm (empty: clear)"),
        _field("user_token_signature_algorithm", pa.string(), "ActivateSession request: user token signature"),
        _field("delete_subscriptions", pa.bool_(), "CloseSession request: delete the session's subscriptions"),
        _field("status_code", pa.int64(), "responses: service result"),
        _field("status", pa.string(), "responses: service result name"),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        _field("service", pa.string(), "message the item belongs to (ReadRequest, WriteResponse...)"),
        _field("request_id", pa.int64(), "request id of the message (joins opcua)"),
        _field("index", pa.int32(), "position of the item in its message (results follow request order)"),
        _field("node_id", pa.string(), "node read, written, browsed or monitored (responses: from the request)"),
        _field("attribute_id", pa.int32(), "attribute id (13 Value)"),
        _field("attribute", pa.string(), "attribute name"),
        _field("index_range", pa.string(), "index range of an array value, as received"),
        _field("value_type", pa.string(), "written/read value: built-in type (Double, String...)"),
        _field("array_length", pa.int32(), "written/read value: element count when it is an array"),
        _field("value", pa.string(), "written/read scalar value as text (cut at 4096 characters)"),
        _field("object_id", pa.string(), "Call: object NodeId"),
        _field("method_id", pa.string(), "Call: method NodeId"),
        _field("argument_count", pa.int32(), "Call: input (request) or output (response) argument count"),
        _field("arguments", pa.list_(pa.string()), "Call: arguments as type:value (first 64)"),
        _field("browse_direction", pa.string(), "Browse: Forward, Inverse or Both"),
        _field("reference_type_id", pa.string(), "Browse: reference type followed"),
        _field("include_subtypes", pa.bool_(), "Browse: include subtypes of the reference type"),
        _field("node_class_mask", pa.int64(), "Browse: node classes asked (0 all)"),
        _field("result_mask", pa.int64(), "Browse: reference fields asked"),
        _field("reference_count", pa.int32(), "Browse response: references returned for the node"),
        _field("continuation_point_length", pa.int32(), "Browse response: continuation point length (-1 none)"),
        _field("monitoring_mode", pa.string(), "CreateMonitoredItems: Disabled, Sampling or Reporting"),
        _field("client_handle", pa.int64(), "CreateMonitoredItems request: client handle"),
        _field("sampling_interval", pa.float64(), "CreateMonitoredItems: sampling interval asked/granted, ms"),
        _field("queue_size", pa.int64(), "CreateMonitoredItems: queue size asked/granted"),
        _field("monitored_item_id", pa.int64(), "CreateMonitoredItems response: monitored item id"),
        _field("status_code", pa.int64(), "results: status code of the operation"),
        _field("status", pa.string(), "results: status code name"),
    ]
)

ENDPOINT_SCHEMA = pa.schema(
    [
        _field("service", pa.string(), "GetEndpointsResponse or CreateSessionResponse"),
        _field("request_id", pa.int64(), "request id of the message (joins opcua)"),
        _field("index", pa.int32(), "position in the endpoint list"),
        _field("endpoint_url", pa.string(), "endpoint URL, as received"),
        _field("application_uri", pa.string(), "server application URI, as received"),
        _field("product_uri", pa.string(), "server product URI, as received"),
        _field("application_name", pa.string(), "server application name, as received"),
        _field("application_type", pa.string(), "Server, Client, ClientAndServer or DiscoveryServer"),
        _field("gateway_server_uri", pa.string(), "gateway server URI"),
        _field("discovery_profile_uri", pa.string(), "discovery profile URI"),
        _field("discovery_urls", pa.list_(pa.string()), "discovery URLs"),
        _field("server_certificate_length", pa.int32(), "server certificate length (-1 absent)"),
        _field("server_certificate_thumbprint", pa.string(), "SHA-1 of the server certificate, hex"),
        _field("security_mode", pa.string(), "None, Sign or SignAndEncrypt"),
        _field("security_policy_uri", pa.string(), "security policy URI"),
        _field("user_tokens", pa.list_(USER_TOKEN), "user identity token policies accepted"),
        _field("transport_profile_uri", pa.string(), "transport profile URI"),
        _field("security_level", pa.int32(), "relative security level the server gives this endpoint"),
    ]
)


class _Partial:
    """Chunks of one message received so far."""

    __slots__ = ("chunks", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.chunks = 0


class OpcuaSession(Session):
    """One UA TCP connection: framing per direction, chunk reassembly, channel security, request pairing."""

    def __init__(self) -> None:
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.skipped = {Direction.TO_SERVER: 0, Direction.TO_CLIENT: 0}
        self.partial: dict[tuple[Direction, int], _Partial] = {}
        #: secure channel id -> whether its bodies are readable (security policy None).
        self.channels: dict[int, bool] = {}
        self.pending: dict[int, tuple[float, str | None, list[Row]]] = {}
        self.pending_items = 0
        #: Largest chunk each direction may send, from the ACK (0: unknown).
        self.chunk_limit = {Direction.TO_SERVER: 0, Direction.TO_CLIENT: 0}
        self.over_limit_reported: set[Direction] = set()

    # -- framing ----------------------------------------------------------------------------------------------

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= HEADER_SIZE:
            kind = bytes(buffer[0:3])
            chunk = buffer[3]
            size = _SIZE.unpack_from(buffer, 4)[0]
            minimum = MINIMUM_SIZE.get(kind)
            if (
                minimum is None
                or chunk not in CHUNK_TYPES
                or (chunk != 0x46 and kind in CONNECTION_MESSAGES)
                or not minimum <= size <= MAXIMUM_CHUNK_SIZE
            ):
                if not self._resynchronise(buffer, direction):
                    break
                continue
            if len(buffer) < size:
                break
            events += self._report_skipped(direction)
            message = bytes(buffer[:size])
            del buffer[:size]
            try:
                events += self._chunk(kind, chunk, message, direction, timestamp)
            except Malformed as error:  # pragma: no cover - every parser catches its own; kept as a last guard
                events.append(anomaly(PROTOCOL, "malformed_message", f"{direction.name}: {error}"))
        return events

    def _resynchronise(self, buffer: bytearray, direction: Direction) -> bool:
        """Drop bytes up to the next possible header; False when more data is needed to find one."""
        found = HEADER_PATTERN.search(buffer, 1)
        if found is None:
            keep = min(len(buffer), 3)  # a header may start in the last bytes
            dropped = len(buffer) - keep
            del buffer[:dropped]
            self.skipped[direction] += dropped
            return False
        self.skipped[direction] += found.start()
        del buffer[: found.start()]
        return True

    def _report_skipped(self, direction: Direction) -> list[Event]:
        count = self.skipped[direction]
        if not count:
            return []
        self.skipped[direction] = 0
        return [anomaly(PROTOCOL, "invalid_header", f"{direction.name}: {count} bytes skipped to a message header")]

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.buffers[direction].clear()
        events = self._report_skipped(direction)
        for key in [key for key in self.partial if key[0] == direction]:
            partial = self.partial.pop(key)
            events.append(
                anomaly(PROTOCOL, "incomplete_message", f"{direction.name}: request {key[1]}: "
                        f"{partial.chunks} chunks lost in a gap")
            )  # fmt: skip
        return events

    def close(self) -> list[Event]:
        events: list[Event] = []
        for direction, buffer in self.buffers.items():
            events += self._report_skipped(direction)
            if buffer:
                events.append(anomaly(PROTOCOL, "truncated_message", f"{direction.name}: {len(buffer)} bytes left"))
                buffer.clear()
        for (direction, request_id), partial in self.partial.items():
            events.append(
                anomaly(PROTOCOL, "incomplete_message", f"{direction.name}: request {request_id}: "
                        f"{partial.chunks} chunks without a final chunk")
            )  # fmt: skip
        self.partial.clear()
        self.pending.clear()
        self.pending_items = 0
        return events

    # -- one chunk ----------------------------------------------------------------------------------------------

    def _chunk(self, kind: bytes, chunk: int, message: bytes, direction: Direction, timestamp: float) -> list[Event]:
        events: list[Event] = []
        size = len(message)
        limit = self.chunk_limit[direction]
        if limit and size > limit and direction not in self.over_limit_reported:
            self.over_limit_reported.add(direction)
            events.append(
                anomaly(PROTOCOL, "chunk_exceeds_buffer", f"{direction.name}: {kind.decode()} chunk of {size} "
                        f"bytes exceeds the negotiated buffer size {limit}")
            )  # fmt: skip
        row: Row = {"message_type": kind.decode(), "chunk_type": chr(chunk), "chunk_count": 1, "message_size": size}
        if kind in CONNECTION_MESSAGES:
            return events + self._connection_message(kind, message, direction, row)
        reader = Reader(message, HEADER_SIZE)
        try:
            channel = reader.uint32()
            row["secure_channel_id"] = channel
            if kind == b"OPN":
                policy = reader.string()
                row["security_policy_uri"] = policy
                row["sender_certificate_length"], row["sender_certificate_thumbprint"] = thumbprint(reader)
                receiver = reader.bytestring()
                row["receiver_certificate_thumbprint"] = receiver.hex() if receiver else None
                readable: bool | None = policy == SECURITY_POLICY_NONE
                if len(self.channels) < MAXIMUM_CHANNELS or channel in self.channels:
                    self.channels[channel] = bool(readable)
            else:
                row["security_token_id"] = reader.uint32()
                readable = self.channels.get(channel)
        except Malformed as error:
            return events + self._malformed(row, "OPN security header", error, direction)
        if readable is False:
            row["encrypted"] = True
            return [*events, Event(PROTOCOL, "secured", row)]
        if readable:
            row["encrypted"] = False
        try:
            sequence_number, request_id = _SEQUENCE.unpack_from(message, reader.position)
        except struct.error:
            return events + self._malformed(row, "sequence header", Malformed("truncated"), direction)
        row["sequence_number"] = sequence_number
        row["request_id"] = request_id
        body = memoryview(message)[reader.position + 8 :]
        key = (direction, request_id)
        if chunk == 0x43:  # C: an intermediate chunk
            return events + self._intermediate(key, body, size)
        partial = self.partial.pop(key, None)
        if partial is not None:
            row["chunk_count"] = partial.chunks + 1
            row["message_size"] = partial.size + size
        if chunk == 0x41:  # A: the sender abandoned the message (Part 6, 6.7.3)
            abort = Reader(body)
            try:
                code = abort.uint32()
                row["error_code"], row["error"] = code, status_name(code)
                row["reason"] = abort.string()
            except Malformed as error:
                return events + self._malformed(row, "abort chunk", error, direction)
            return [*events, Event(PROTOCOL, "abort", row)]
        payload = b"".join([*partial.parts, body]) if partial is not None else body
        return events + self._message(row, payload, request_id, readable is None, direction, timestamp)

    def _intermediate(self, key: tuple[Direction, int], body: memoryview, size: int) -> list[Event]:
        events: list[Event] = []
        partial = self.partial.get(key)
        if partial is None:
            if len(self.partial) >= MAXIMUM_PARTIAL:
                (old_direction, old_request), _ = self.partial.popitem()
                events.append(
                    anomaly(PROTOCOL, "incomplete_message", f"{old_direction.name}: request {old_request}: dropped, "
                            f"more than {MAXIMUM_PARTIAL} messages in progress")
                )  # fmt: skip
            partial = self.partial[key] = _Partial()
        partial.parts.append(bytes(body))
        partial.chunks += 1
        partial.size += size
        if partial.chunks > MAXIMUM_CHUNKS or partial.size > MAXIMUM_MESSAGE_SIZE:
            del self.partial[key]
            events.append(
                anomaly(PROTOCOL, "message_too_large", f"{key[0].name}: request {key[1]}: {partial.chunks} chunks, "
                        f"{partial.size} bytes: dropped")
            )  # fmt: skip
        return events

    def _connection_message(self, kind: bytes, message: bytes, direction: Direction, row: Row) -> list[Event]:
        reader = Reader(message, HEADER_SIZE)
        try:
            if kind in (b"HEL", b"ACK"):
                version, receive, send, maximum_message, maximum_chunks = _HELLO.unpack_from(message, HEADER_SIZE)
                reader.position += 20
                row.update(
                    protocol_version=version,
                    receive_buffer_size=receive,
                    send_buffer_size=send,
                    max_message_size=maximum_message,
                    max_chunk_count=maximum_chunks,
                )
                if kind == b"HEL":
                    row["endpoint_url"] = reader.string()
                else:
                    # The server's receive buffer bounds the client's chunks, its send buffer its own.
                    self.chunk_limit[Direction.TO_SERVER] = receive
                    self.chunk_limit[Direction.TO_CLIENT] = send
            elif kind == b"ERR":
                code = reader.uint32()
                row["error_code"], row["error"] = code, status_name(code)
                row["reason"] = reader.string()
            else:
                row["server_uri"] = reader.string()
                row["endpoint_url"] = reader.string()
        except (Malformed, struct.error) as error:
            return self._malformed(row, kind.decode(), error, direction)
        return [Event(PROTOCOL, EVENT_TYPES[kind], row)]

    def _malformed(self, row: Row, where: str, error: Exception, direction: Direction) -> list[Event]:
        row["malformed"] = f"{where}: {error}"
        detail = f"{direction.name} {row['message_type']}: {where}: {error}"
        return [Event(PROTOCOL, "malformed", row), anomaly(PROTOCOL, "malformed_message", detail)]

    # -- one reassembled message --------------------------------------------------------------------------------

    def _message(
        self,
        row: Row,
        payload: bytes | memoryview,
        request_id: int,
        unknown_channel: bool,
        direction: Direction,
        timestamp: float,
    ) -> list[Event]:
        reader = Reader(payload)
        try:
            type_number, type_text = reader.type_id()
        except Malformed as error:
            if unknown_channel:  # no handshake seen: perhaps an encrypted body
                return [Event(PROTOCOL, "message", row)]
            return self._malformed(row, "type id", error, direction)
        service = SERVICES.get(type_number) if type_number is not None else None
        if service is None and unknown_channel:
            # Without the OpenSecureChannel the policy is unknown: an unknown type is most likely ciphertext.
            return [Event(PROTOCOL, "message", row)]
        row["service_node_id"] = type_text
        row["service_type_id"] = type_number if type_number is not None and type_number < 1 << 31 else None
        events: list[Event] = []
        if service is None:
            events.append(
                anomaly(PROTOCOL, "unknown_service", f"{direction.name} {row['message_type']}: type {type_text}")
            )
            return [Event(PROTOCOL, "message", row), *events]
        row["service"] = service
        is_request = service.endswith("Request")
        row["writes"] = service in WRITE_SERVICES if is_request else None
        body = Body(row)
        try:
            parse_body(reader, type_number or 0, is_request, body)
        except Malformed as error:
            row["malformed"] = f"{service}: {error}"
            events.append(anomaly(PROTOCOL, "malformed_message", f"{direction.name} {service}: {error}"))
        if is_request:
            event_type = "request"
            self._remember(request_id, timestamp, service, body.items)
        else:
            event_type = "fault" if service == "ServiceFault" else "response"
            request = self._forget(request_id)
            if request is None:
                row["matched"] = False
            else:
                requested_at, request_service, request_items = request
                # A response answers its request when the service agrees (a ServiceFault answers any request).
                row["matched"] = service == "ServiceFault" or (
                    request_service is not None and request_service[: -len("Request")] == service[: -len("Response")]
                )
                row["latency"] = max(0.0, timestamp - requested_at)
                _copy_request_items(body.items, request_items)
        result = [Event(PROTOCOL, event_type, row)]
        common = {"service": service, "request_id": request_id}
        if body.session is not None:
            session = {**body.session, **common}
            if not is_request:
                session["status_code"], session["status"] = row.get("status_code"), row.get("status")
            result.append(Event(SESSION_TABLE, event_type, session))
        result += [Event(ITEM_TABLE, event_type, {**item, **common}) for item in body.items]
        result += [Event(ENDPOINT_TABLE, "endpoint", {**endpoint, **common}) for endpoint in body.endpoints]
        return result + events

    def _remember(self, request_id: int, timestamp: float, service: str, items: list[Row]) -> None:
        """Keep what a response needs from its request, within ``MAXIMUM_PENDING`` and ``MAXIMUM_PENDING_ITEMS``."""
        self._forget(request_id)
        if len(self.pending) >= MAXIMUM_PENDING:
            self._forget(next(iter(self.pending)))
        kept: list[Row] = []
        if items and self.pending_items + len(items) <= MAXIMUM_PENDING_ITEMS:
            kept = [{name: item[name] for name in REQUEST_ITEM_FIELDS if name in item} for item in items]
            self.pending_items += len(kept)
        self.pending[request_id] = (timestamp, service, kept)

    def _forget(self, request_id: int) -> tuple[float, str | None, list[Row]] | None:
        request = self.pending.pop(request_id, None)
        if request is not None:
            self.pending_items -= len(request[2])
        return request


def _copy_request_items(results: list[Row], requests: list[Row]) -> None:
    """Give each result row the node (and attribute, method) of the request item at the same position."""
    if not requests:
        return
    for result, request in zip(results, requests, strict=False):
        for name, value in request.items():
            if value is not None and name not in result:
                result[name] = value


class OpcuaDecoder(Decoder):
    """OPC UA binary (UA TCP), found by its message header whatever the port."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({4840})
    tables: ClassVar[dict[str, pa.Schema]] = {
        PROTOCOL: MESSAGE_SCHEMA,
        SESSION_TABLE: SESSION_SCHEMA,
        ITEM_TABLE: ITEM_SCHEMA,
        ENDPOINT_TABLE: ENDPOINT_SCHEMA,
    }

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """Every message header in the payload is a UA TCP header with a plausible size.

        A HEL must also carry its endpoint URL exactly (a String filling the rest of the message); a capture that
        starts mid-connection is recognised by its OPN/MSG/CLO headers (channel and sequence headers follow).
        """
        if len(payload) < HEADER_SIZE:
            return False
        position = 0
        while position + HEADER_SIZE <= len(payload):
            kind = payload[position : position + 3]
            chunk = payload[position + 3]
            size = _SIZE.unpack_from(payload, position + 4)[0]
            minimum = MINIMUM_SIZE.get(kind)
            if minimum is None or chunk not in CHUNK_TYPES or not minimum <= size <= MAXIMUM_CHUNK_SIZE:
                return False
            if kind in CONNECTION_MESSAGES and chunk != 0x46:
                return False
            if kind == b"HEL" and position + size <= len(payload):
                url_length = int.from_bytes(payload[position + 28 : position + 32], "little", signed=True)
                if url_length != size - 32 and not (url_length == -1 and size == 32):
                    return False
            position += size
        return True

    def session(self) -> Session:
        return OpcuaSession()


__all__ = ["OpcuaDecoder", "OpcuaSession"]

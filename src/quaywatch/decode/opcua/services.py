"""Service message bodies (Part 4 parameters, Part 6 binary layout), as rows for the quaywatch tables.

``parse_body`` reads one reassembled, readable message body after its type NodeId and returns the fields of the
``opcua`` row plus any ``opcua_session``, ``opcua_item`` and ``opcua_endpoint`` rows. Every read is bounds-checked
by :class:`Reader`; a contradiction raises :class:`Malformed` and the caller keeps what was read before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from quaywatch.decode.opcua.constants import (
    APPLICATION_TYPES,
    ATTRIBUTES,
    BROWSE_DIRECTIONS,
    IDENTITY_TOKENS,
    MONITORING_MODES,
    REQUEST_TYPES,
    SECURITY_MODES,
    TIMESTAMPS_TO_RETURN,
    USER_TOKEN_TYPES,
    status_name,
)
from quaywatch.decode.opcua.datatypes import Malformed, Reader

Row = dict[str, object]

#: Most item rows produced for one message; the ``opcua`` row still counts them all.
MAXIMUM_ITEM_ROWS = 10_000
#: Most arguments of one method call kept as text.
MAXIMUM_ARGUMENTS = 64


@dataclass(slots=True)
class Body:
    """What one message body yields: ``opcua`` fields and detail rows."""

    fields: Row = field(default_factory=dict)
    session: Row | None = None
    items: list[Row] = field(default_factory=list)
    endpoints: list[Row] = field(default_factory=list)


def thumbprint(reader: Reader) -> tuple[int, str | None]:
    """(length field, SHA-1 hex) of a certificate ByteString: the certificate's identity without its bytes."""
    raw = reader.bytestring()
    if raw is None:
        return -1, None
    return len(raw), hashlib.sha1(raw, usedforsecurity=False).hexdigest() if raw else None


def _enum(names: dict[int, str], value: int) -> str:
    return names.get(value, f"Unknown_{value}")


def _status(row: Row, code: int) -> None:
    row["status_code"] = code
    row["status"] = status_name(code)


# -- headers (Part 4, 7.33 RequestHeader and 7.34 ResponseHeader) ----------------------------------------------


def request_header(reader: Reader, fields: Row) -> None:
    fields["authentication_token"] = reader.node_id()
    fields["header_timestamp"] = reader.datetime()
    fields["request_handle"] = reader.uint32()
    fields["return_diagnostics"] = reader.uint32()
    fields["audit_entry_id"] = reader.string()
    fields["timeout_hint"] = reader.uint32()
    reader.extension_object()


def response_header(reader: Reader, fields: Row) -> None:
    fields["header_timestamp"] = reader.datetime()
    fields["request_handle"] = reader.uint32()
    _status(fields, reader.uint32())
    reader.diagnostic_info()
    for _ in range(reader.array_count(4)):
        reader.skip_string()
    reader.extension_object()


# -- shared structures --------------------------------------------------------------------------------------


def application_description(reader: Reader, row: Row) -> None:
    """ApplicationDescription (Part 4, 7.2) into ``row``."""
    row["application_uri"] = reader.string()
    row["product_uri"] = reader.string()
    row["application_name"] = reader.localized_text()[1]
    row["application_type"] = _enum(APPLICATION_TYPES, reader.int32())
    row["gateway_server_uri"] = reader.string()
    row["discovery_profile_uri"] = reader.string()
    row["discovery_urls"] = reader.strings()


def endpoint_description(reader: Reader) -> Row:
    """EndpointDescription (Part 4, 7.14): what the server offers, security first."""
    row: Row = {"endpoint_url": reader.string()}
    application_description(reader, row)
    row["server_certificate_length"], row["server_certificate_thumbprint"] = thumbprint(reader)
    row["security_mode"] = _enum(SECURITY_MODES, reader.int32())
    row["security_policy_uri"] = reader.string()
    tokens = []
    for _ in range(reader.array_count(9)):
        tokens.append(
            {
                "policy_id": reader.string(),
                "token_type": _enum(USER_TOKEN_TYPES, reader.int32()),
                "issued_token_type": reader.string(),
                "issuer_endpoint_url": reader.string(),
                "security_policy_uri": reader.string(),
            }
        )
    row["user_tokens"] = tokens
    row["transport_profile_uri"] = reader.string()
    row["security_level"] = reader.byte()
    return row


def endpoint_descriptions(reader: Reader, body: Body) -> None:
    count = reader.array_count(20)
    body.fields["item_count"] = count
    for index in range(count):
        row = endpoint_description(reader)
        row["index"] = index
        body.endpoints.append(row)


def read_value_id(reader: Reader, row: Row) -> None:
    """ReadValueId (Part 4, 7.29): node, attribute, index range; the data encoding is skipped."""
    row["node_id"] = reader.node_id()
    attribute = reader.uint32()
    row["attribute_id"] = attribute
    row["attribute"] = ATTRIBUTES.get(attribute, f"Unknown_{attribute}")
    row["index_range"] = reader.string()
    reader.uint16()
    reader.skip_string()


def _value(row: Row, reader: Reader) -> None:
    variant = reader.variant()
    row["value_type"] = variant.type_name
    row["array_length"] = variant.array_length
    row["value"] = variant.value


def _items(body: Body, count: int, parse: Callable[[Reader, Row], None], reader: Reader) -> None:
    """Parse ``count`` elements with ``parse``; rows beyond the cap are read but not kept."""
    body.fields["item_count"] = count
    for index in range(count):
        row: Row = {"index": index}
        if index < MAXIMUM_ITEM_ROWS:
            body.items.append(row)  # before parsing: a malformed item keeps what was read (a method id...)
        parse(reader, row)


def _results(reader: Reader, body: Body) -> None:
    """A StatusCode[] of per-operation results, then the DiagnosticInfo[]."""
    count = reader.array_count(4)

    def one(reader: Reader, row: Row) -> None:
        _status(row, reader.uint32())

    _items(body, count, one, reader)
    reader.diagnostic_infos()


# -- services -----------------------------------------------------------------------------------------------


def open_secure_channel_request(reader: Reader, body: Body) -> None:
    fields = body.fields
    fields["protocol_version"] = reader.uint32()
    fields["request_type"] = _enum(REQUEST_TYPES, reader.int32())
    fields["security_mode"] = _enum(SECURITY_MODES, reader.int32())
    reader.bytestring_length()
    fields["requested_lifetime"] = reader.uint32()


def open_secure_channel_response(reader: Reader, body: Body) -> None:
    fields = body.fields
    fields["protocol_version"] = reader.uint32()
    fields["token_channel_id"] = reader.uint32()
    fields["token_id"] = reader.uint32()
    reader.int64()  # CreatedAt
    fields["revised_lifetime"] = reader.uint32()
    reader.bytestring_length()


def get_endpoints_request(reader: Reader, body: Body) -> None:
    body.fields["endpoint_url"] = reader.string()
    reader.strings()  # locale ids
    reader.strings()  # profile uris


def get_endpoints_response(reader: Reader, body: Body) -> None:
    endpoint_descriptions(reader, body)


def find_servers_request(reader: Reader, body: Body) -> None:
    body.fields["endpoint_url"] = reader.string()


def find_servers_response(reader: Reader, body: Body) -> None:
    count = reader.array_count(25)
    body.fields["item_count"] = count


def create_session_request(reader: Reader, body: Body) -> None:
    row: Row = {}
    body.session = row
    application_description(reader, row)
    row["server_uri"] = reader.string()
    row["endpoint_url"] = reader.string()
    row["session_name"] = reader.string()
    row["client_nonce_length"] = reader.bytestring_length()
    row["certificate_length"], row["certificate_thumbprint"] = thumbprint(reader)
    row["session_timeout"] = reader.double()
    row["max_message_size"] = reader.uint32()


def create_session_response(reader: Reader, body: Body) -> None:
    row: Row = {}
    body.session = row
    row["session_id"] = reader.node_id()
    row["authentication_token"] = reader.node_id()
    row["session_timeout"] = reader.double()
    row["server_nonce_length"] = reader.bytestring_length()
    row["certificate_length"], row["certificate_thumbprint"] = thumbprint(reader)
    endpoint_descriptions(reader, body)
    row["endpoint_count"] = body.fields.pop("item_count")
    for _ in range(reader.array_count(8)):  # SignedSoftwareCertificate: deprecated, always empty
        reader.bytestring_length()
        reader.bytestring_length()
    row["signature_algorithm"] = reader.signature_algorithm()
    row["max_message_size"] = reader.uint32()


def activate_session_request(reader: Reader, body: Body) -> None:
    row: Row = {}
    body.session = row
    row["signature_algorithm"] = reader.signature_algorithm()
    for _ in range(reader.array_count(8)):
        reader.bytestring_length()
        reader.bytestring_length()
    row["locale_ids"] = reader.strings()
    type_number, type_text, token = reader.extension_object()
    row["identity_token"] = IDENTITY_TOKENS.get(type_number, type_text) if type_number is not None else type_text
    if token is not None:
        identity_token(Reader(token), type_number, row)
    row["user_token_signature_algorithm"] = reader.signature_algorithm()


def identity_token(reader: Reader, type_number: int | None, row: Row) -> None:
    """UserIdentityToken bodies (Part 4, 7.41). Passwords and token data are never kept: only their presence."""
    row["policy_id"] = reader.string()
    if type_number == 324:
        row["user_name"] = reader.string()
        row["password_present"] = reader.bytestring_length() >= 0
        row["encryption_algorithm"] = reader.string()
    elif type_number == 327:
        row["certificate_length"], row["certificate_thumbprint"] = thumbprint(reader)
    elif type_number == 940:
        reader.bytestring_length()
        row["encryption_algorithm"] = reader.string()


def activate_session_response(reader: Reader, body: Body) -> None:
    row: Row = {}
    body.session = row
    row["server_nonce_length"] = reader.bytestring_length()
    _results(reader, body)


def close_session_request(reader: Reader, body: Body) -> None:
    body.session = {"delete_subscriptions": reader.boolean()}


def close_session_response(reader: Reader, body: Body) -> None:
    body.session = {}


def read_request(reader: Reader, body: Body) -> None:
    body.fields["max_age"] = reader.double()
    body.fields["timestamps_to_return"] = _enum(TIMESTAMPS_TO_RETURN, reader.int32())
    _items(body, reader.array_count(13), read_value_id, reader)


def read_response(reader: Reader, body: Body) -> None:
    def one(reader: Reader, row: Row) -> None:
        _, value, status = reader.data_value()
        _status(row, status)
        if value is not None:
            row["value_type"] = value.type_name
            row["array_length"] = value.array_length
            row["value"] = value.value

    _items(body, reader.array_count(1), one, reader)
    reader.diagnostic_infos()


def write_request(reader: Reader, body: Body) -> None:
    def one(reader: Reader, row: Row) -> None:
        row["node_id"] = reader.node_id()
        attribute = reader.uint32()
        row["attribute_id"] = attribute
        row["attribute"] = ATTRIBUTES.get(attribute, f"Unknown_{attribute}")
        row["index_range"] = reader.string()
        _, value, status = reader.data_value()
        if value is not None:
            row["value_type"] = value.type_name
            row["array_length"] = value.array_length
            row["value"] = value.value
        if status:
            _status(row, status)

    _items(body, reader.array_count(11), one, reader)


def _arguments(reader: Reader, row: Row) -> None:
    """A Variant[] of method arguments: counted, and the first ones kept as ``type:value`` text."""
    count = reader.array_count(1)
    row["argument_count"] = count
    arguments: list[str] = []
    for _ in range(count):
        variant = reader.variant()
        text = variant.value if variant.array_length is None else f"[{variant.array_length}]"
        if len(arguments) < MAXIMUM_ARGUMENTS:
            arguments.append(f"{variant.type_name}:{text}" if text is not None else variant.type_name)
    row["arguments"] = arguments


def call_request(reader: Reader, body: Body) -> None:
    def one(reader: Reader, row: Row) -> None:
        row["object_id"] = reader.node_id()
        row["method_id"] = reader.node_id()
        _arguments(reader, row)

    _items(body, reader.array_count(8), one, reader)


def call_response(reader: Reader, body: Body) -> None:
    def one(reader: Reader, row: Row) -> None:
        _status(row, reader.uint32())
        for _ in range(reader.array_count(4)):
            reader.uint32()
        reader.diagnostic_infos()
        _arguments(reader, row)

    _items(body, reader.array_count(13), one, reader)
    reader.diagnostic_infos()


def browse_request(reader: Reader, body: Body) -> None:
    body.fields["view_id"] = reader.node_id()
    reader.int64()  # view timestamp
    reader.uint32()  # view version
    body.fields["max_references"] = reader.uint32()

    def one(reader: Reader, row: Row) -> None:
        row["node_id"] = reader.node_id()
        row["browse_direction"] = _enum(BROWSE_DIRECTIONS, reader.int32())
        row["reference_type_id"] = reader.node_id()
        row["include_subtypes"] = reader.boolean()
        row["node_class_mask"] = reader.uint32()
        row["result_mask"] = reader.uint32()

    _items(body, reader.array_count(15), one, reader)


def _browse_result(reader: Reader, row: Row) -> None:
    _status(row, reader.uint32())
    row["continuation_point_length"] = reader.bytestring_length()
    count = reader.array_count(11)
    for _ in range(count):  # ReferenceDescription: counted, not kept
        reader.node_id()
        reader.boolean()
        reader.expanded_node_id()
        reader.qualified_name()
        reader.localized_text()
        reader.int32()
        reader.expanded_node_id()
    row["reference_count"] = count


def browse_response(reader: Reader, body: Body) -> None:
    _items(body, reader.array_count(9), _browse_result, reader)
    reader.diagnostic_infos()


def browse_next_request(reader: Reader, body: Body) -> None:
    body.fields["release_continuation_points"] = reader.boolean()
    count = reader.array_count(4)
    for _ in range(count):
        reader.bytestring_length()
    body.fields["item_count"] = count


def create_subscription_request(reader: Reader, body: Body) -> None:
    body.fields["publishing_interval"] = reader.double()
    reader.uint32()  # lifetime count
    reader.uint32()  # max keep-alive count
    reader.uint32()  # max notifications per publish
    body.fields["publishing_enabled"] = reader.boolean()
    reader.byte()  # priority


def create_subscription_response(reader: Reader, body: Body) -> None:
    body.fields["subscription_id"] = reader.uint32()
    body.fields["publishing_interval"] = reader.double()
    reader.uint32()
    reader.uint32()


def create_monitored_items_request(reader: Reader, body: Body) -> None:
    body.fields["subscription_id"] = reader.uint32()
    body.fields["timestamps_to_return"] = _enum(TIMESTAMPS_TO_RETURN, reader.int32())

    def one(reader: Reader, row: Row) -> None:
        read_value_id(reader, row)
        row["monitoring_mode"] = _enum(MONITORING_MODES, reader.int32())
        row["client_handle"] = reader.uint32()
        row["sampling_interval"] = reader.double()
        reader.extension_object()  # filter
        row["queue_size"] = reader.uint32()
        reader.boolean()  # discard oldest

    _items(body, reader.array_count(30), one, reader)


def create_monitored_items_response(reader: Reader, body: Body) -> None:
    def one(reader: Reader, row: Row) -> None:
        _status(row, reader.uint32())
        row["monitored_item_id"] = reader.uint32()
        row["sampling_interval"] = reader.double()
        row["queue_size"] = reader.uint32()
        reader.extension_object()

    _items(body, reader.array_count(20), one, reader)
    reader.diagnostic_infos()


def publish_request(reader: Reader, body: Body) -> None:
    count = reader.array_count(8)
    reader.skip(8 * count)
    body.fields["item_count"] = count


def publish_response(reader: Reader, body: Body) -> None:
    body.fields["subscription_id"] = reader.uint32()
    reader.skip(4 * reader.array_count(4))  # available sequence numbers
    reader.boolean()  # more notifications
    reader.uint32()  # notification sequence number
    reader.int64()  # publish time
    count = reader.array_count(3)
    for _ in range(count):
        reader.extension_object()
    body.fields["item_count"] = count


def service_fault(reader: Reader, body: Body) -> None:
    """ServiceFault: the response header says it all."""


REQUESTS: dict[int, Callable[[Reader, Body], None]] = {
    446: open_secure_channel_request,
    428: get_endpoints_request,
    422: find_servers_request,
    461: create_session_request,
    467: activate_session_request,
    473: close_session_request,
    631: read_request,
    673: write_request,
    712: call_request,
    527: browse_request,
    533: browse_next_request,
    787: create_subscription_request,
    751: create_monitored_items_request,
    826: publish_request,
}

RESPONSES: dict[int, Callable[[Reader, Body], None]] = {
    449: open_secure_channel_response,
    431: get_endpoints_response,
    425: find_servers_response,
    464: create_session_response,
    470: activate_session_response,
    476: close_session_response,
    634: read_response,
    676: _results,
    715: call_response,
    530: browse_response,
    536: browse_response,
    790: create_subscription_response,
    754: create_monitored_items_response,
    829: publish_response,
    397: service_fault,
}


def parse_body(reader: Reader, type_number: int, is_request: bool, body: Body) -> None:
    """Fill ``body`` from a message body positioned after its type NodeId.

    The header is read for every known service; the parameters only for the services listed above. Raises
    :class:`Malformed` part-way, leaving in ``body`` what was read.
    """
    if is_request:
        request_header(reader, body.fields)
        parser = REQUESTS.get(type_number)
    else:
        response_header(reader, body.fields)
        parser = RESPONSES.get(type_number)
    if parser is not None:
        parser(reader, body)


__all__ = ["Body", "Malformed", "parse_body"]

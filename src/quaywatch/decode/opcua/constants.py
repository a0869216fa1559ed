"""OPC UA protocol constants: UA TCP message types, service encodings, enumerations.

References are to the OPC UA specification, Part 6 (Mappings, "UA TCP" and "UA Secure Conversation"), Part 4
(Services) and Part 3 (Address Space Model). Service names are the browse names of the DefaultBinary encoding
nodes of namespace 0 (Part 6, Annex A; the NodeIds.csv of the OPC Foundation UA-Nodeset repository). Status code
names are reference data loaded from ``quaywatch/data/opcua_status_codes.csv``.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

#: UA TCP message types (Part 6, 7.1.2.2). The first three bytes of every message.
MESSAGE_TYPES = frozenset({b"HEL", b"ACK", b"ERR", b"RHE", b"OPN", b"CLO", b"MSG"})
#: Connection-protocol messages: never chunked, no secure-conversation headers.
CONNECTION_MESSAGES = frozenset({b"HEL", b"ACK", b"ERR", b"RHE"})
#: Secure-conversation messages carrying a sequence header and a body.
SECURE_MESSAGES = frozenset({b"OPN", b"CLO", b"MSG"})
#: Chunk types: F final, C intermediate, A abort (Part 6, 6.7.2.2).
CHUNK_TYPES = frozenset({ord("F"), ord("C"), ord("A")})

HEADER_SIZE = 8
#: Smallest valid chunk per type: header plus the fixed fields (HEL: 5 UInt32 + String length).
MINIMUM_SIZE = {b"HEL": 32, b"ACK": 28, b"ERR": 16, b"RHE": 16, b"OPN": 36, b"CLO": 24, b"MSG": 24}
#: Largest chunk accepted. The specification bounds chunks by the negotiated buffer sizes (at least 8192);
#: real stacks use 64 KiB to a few MiB. Larger claims are treated as framing errors.
MAXIMUM_CHUNK_SIZE = 1 << 24

EVENT_TYPES = {b"HEL": "hello", b"ACK": "acknowledge", b"ERR": "error", b"RHE": "reverse_hello"}

SECURITY_POLICY_NONE = "http://opcfoundation.org/UA/SecurityPolicy#None"

#: MessageSecurityMode (Part 4, 7.20).
SECURITY_MODES = {0: "Invalid", 1: "None", 2: "Sign", 3: "SignAndEncrypt"}
#: SecurityTokenRequestType (Part 4, 5.5.2.2).
REQUEST_TYPES = {0: "Issue", 1: "Renew"}
#: ApplicationType (Part 4, 7.2).
APPLICATION_TYPES = {0: "Server", 1: "Client", 2: "ClientAndServer", 3: "DiscoveryServer"}
#: UserTokenType (Part 4, 7.42).
USER_TOKEN_TYPES = {0: "Anonymous", 1: "UserName", 2: "Certificate", 3: "IssuedToken"}
#: BrowseDirection (Part 4, 7.5).
BROWSE_DIRECTIONS = {0: "Forward", 1: "Inverse", 2: "Both", 3: "Invalid"}
#: MonitoringMode (Part 4, 7.23).
MONITORING_MODES = {0: "Disabled", 1: "Sampling", 2: "Reporting"}
#: TimestampsToReturn (Part 4, 7.40).
TIMESTAMPS_TO_RETURN = {0: "Source", 1: "Server", 2: "Both", 3: "Neither", 4: "Invalid"}

#: Identity tokens of ActivateSession, by the id of their DefaultBinary encoding (Part 4, 7.41).
IDENTITY_TOKENS = {
    321: "AnonymousIdentityToken",
    324: "UserNameIdentityToken",
    327: "X509IdentityToken",
    940: "IssuedIdentityToken",
}

#: Attribute ids (Part 4, 7.4 / Part 6, A.1).
ATTRIBUTES = {
    1: "NodeId",
    2: "NodeClass",
    3: "BrowseName",
    4: "DisplayName",
    5: "Description",
    6: "WriteMask",
    7: "UserWriteMask",
    8: "IsAbstract",
    9: "Symmetric",
    10: "InverseName",
    11: "ContainsNoLoops",
    12: "EventNotifier",
    13: "Value",
    14: "DataType",
    15: "ValueRank",
    16: "ArrayDimensions",
    17: "AccessLevel",
    18: "UserAccessLevel",
    19: "MinimumSamplingInterval",
    20: "Historizing",
    21: "Executable",
    22: "UserExecutable",
    23: "DataTypeDefinition",
    24: "RolePermissions",
    25: "UserRolePermissions",
    26: "AccessRestrictions",
    27: "AccessLevelEx",
}

#: Built-in data types, the low six bits of a Variant's encoding byte (Part 6, 5.1.2).
BUILT_IN_TYPES = {
    0: "Null",
    1: "Boolean",
    2: "SByte",
    3: "Byte",
    4: "Int16",
    5: "UInt16",
    6: "Int32",
    7: "UInt32",
    8: "Int64",
    9: "UInt64",
    10: "Float",
    11: "Double",
    12: "String",
    13: "DateTime",
    14: "Guid",
    15: "ByteString",
    16: "XmlElement",
    17: "NodeId",
    18: "ExpandedNodeId",
    19: "StatusCode",
    20: "QualifiedName",
    21: "LocalizedText",
    22: "ExtensionObject",
    23: "DataValue",
    24: "Variant",
    25: "DiagnosticInfo",
}

#: Service messages by the numeric id of their DefaultBinary encoding node (namespace 0).
SERVICES = {
    397: "ServiceFault",
    410: "TestStackRequest",
    413: "TestStackResponse",
    416: "TestStackExRequest",
    419: "TestStackExResponse",
    422: "FindServersRequest",
    425: "FindServersResponse",
    428: "GetEndpointsRequest",
    431: "GetEndpointsResponse",
    437: "RegisterServerRequest",
    440: "RegisterServerResponse",
    446: "OpenSecureChannelRequest",
    449: "OpenSecureChannelResponse",
    452: "CloseSecureChannelRequest",
    455: "CloseSecureChannelResponse",
    461: "CreateSessionRequest",
    464: "CreateSessionResponse",
    467: "ActivateSessionRequest",
    470: "ActivateSessionResponse",
    473: "CloseSessionRequest",
    476: "CloseSessionResponse",
    479: "CancelRequest",
    482: "CancelResponse",
    488: "AddNodesRequest",
    491: "AddNodesResponse",
    494: "AddReferencesRequest",
    497: "AddReferencesResponse",
    500: "DeleteNodesRequest",
    503: "DeleteNodesResponse",
    506: "DeleteReferencesRequest",
    509: "DeleteReferencesResponse",
    527: "BrowseRequest",
    530: "BrowseResponse",
    533: "BrowseNextRequest",
    536: "BrowseNextResponse",
    554: "TranslateBrowsePathsToNodeIdsRequest",
    557: "TranslateBrowsePathsToNodeIdsResponse",
    560: "RegisterNodesRequest",
    563: "RegisterNodesResponse",
    566: "UnregisterNodesRequest",
    569: "UnregisterNodesResponse",
    615: "QueryFirstRequest",
    618: "QueryFirstResponse",
    621: "QueryNextRequest",
    624: "QueryNextResponse",
    631: "ReadRequest",
    634: "ReadResponse",
    664: "HistoryReadRequest",
    667: "HistoryReadResponse",
    673: "WriteRequest",
    676: "WriteResponse",
    700: "HistoryUpdateRequest",
    703: "HistoryUpdateResponse",
    712: "CallRequest",
    715: "CallResponse",
    751: "CreateMonitoredItemsRequest",
    754: "CreateMonitoredItemsResponse",
    763: "ModifyMonitoredItemsRequest",
    766: "ModifyMonitoredItemsResponse",
    769: "SetMonitoringModeRequest",
    772: "SetMonitoringModeResponse",
    775: "SetTriggeringRequest",
    778: "SetTriggeringResponse",
    781: "DeleteMonitoredItemsRequest",
    784: "DeleteMonitoredItemsResponse",
    787: "CreateSubscriptionRequest",
    790: "CreateSubscriptionResponse",
    793: "ModifySubscriptionRequest",
    796: "ModifySubscriptionResponse",
    799: "SetPublishingModeRequest",
    802: "SetPublishingModeResponse",
    826: "PublishRequest",
    829: "PublishResponse",
    832: "RepublishRequest",
    835: "RepublishResponse",
    841: "TransferSubscriptionsRequest",
    844: "TransferSubscriptionsResponse",
    847: "DeleteSubscriptionsRequest",
    850: "DeleteSubscriptionsResponse",
    12208: "FindServersOnNetworkRequest",
    12209: "FindServersOnNetworkResponse",
    12211: "RegisterServer2Request",
    12212: "RegisterServer2Response",
}

#: Services whose request changes the server's address space, values or running state: what the
#: sabotage detections watch (Write, Call, node management, history updates).
WRITE_SERVICES = frozenset(
    {
        "WriteRequest",
        "CallRequest",
        "AddNodesRequest",
        "AddReferencesRequest",
        "DeleteNodesRequest",
        "DeleteReferencesRequest",
        "HistoryUpdateRequest",
    }
)

SEVERITIES = {0: "Good", 1: "Uncertain", 2: "Bad", 3: "Bad"}


@cache
def status_names() -> dict[int, str]:
    """Status code (upper 16 bits, lower bits cleared) -> symbolic name, from the packaged CSV."""
    text = resources.files("quaywatch.data").joinpath("opcua_status_codes.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {int(row["code"], 16): row["name"] for row in csv.DictReader(lines)}


def status_name(code: int) -> str:
    """Name of a status code: its symbolic name, or the severity with the hex code when unknown."""
    names = status_names()
    name = names.get(code & 0xFFFF0000)
    if name is not None:
        return name
    return f"{SEVERITIES[(code >> 30) & 3]}_0x{code:08X}"

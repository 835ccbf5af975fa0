"""The one distbuild protocol: typed messages, the JSON-lines codec, the version handshake."""

from distbuild.protocol.codec import ProtocolError, decode, encode
from distbuild.protocol.messages import MESSAGES, PROTOCOL_VERSION, Message

__all__ = ["MESSAGES", "PROTOCOL_VERSION", "Message", "ProtocolError", "decode", "encode"]

"""Reading back what a test's code published to JetStream (direct stream gets, in order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StoredMessage:
    subject: str
    headers: dict[str, str]
    data: bytes


async def stored_messages(js: Any, stream: str) -> list[StoredMessage]:
    """Every message currently in ``stream``, in order."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        messages.append(StoredMessage(msg.subject or "", dict(msg.headers or {}), msg.data or b""))
    return messages

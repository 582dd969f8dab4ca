"""What the inbox screen shows, as plain values: conversations by correspondent, unread counts.

No I/O and no widgets here, so it is tested on its own and the screen only renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grpc_messenger.model import Message, SendReport, normalize_address

# messages kept per conversation in memory (older ones stay in the local inbox)
MESSAGES_PER_CONVERSATION_MAX = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One message in a conversation; `report` is set for messages this session sent."""

    message: Message
    mine: bool
    report: SendReport | None = None


@dataclass(slots=True)
class Conversation:
    """Everything exchanged with one correspondent."""

    correspondent: str
    entries: list[Entry] = field(default_factory=list)
    unread: int = 0

    @property
    def last_ms(self) -> int:
        """When the latest message was created (0 if none)."""
        return self.entries[-1].message.created_unix_ms if self.entries else 0


class Conversations:
    """Conversations of one signed-in address, newest activity first."""

    def __init__(self, me: str) -> None:
        self.me = normalize_address(me)
        self._by_name: dict[str, Conversation] = {}
        self._keys: set[str] = set()
        self._unread_keys: set[str] = set()

    def add(self, message: Message, *, unread: bool, report: SendReport | None = None) -> Conversation | None:
        """File `message` under its correspondent; return the conversation, or None if nothing changed.

        A message already filed changes only its unread mark: history loaded at
        sign-in and the live stream may both bring a message not yet read.
        """
        mine = normalize_address(message.sender) == self.me
        name = normalize_address(message.recipient if mine else message.sender)
        conversation = self._by_name.setdefault(name, Conversation(correspondent=name))
        if message.key in self._keys:
            if not unread or mine or message.key in self._unread_keys:
                return None
            self._unread_keys.add(message.key)
            conversation.unread += 1
            return conversation
        self._keys.add(message.key)
        entries = conversation.entries
        entries.append(Entry(message=message, mine=mine, report=report))
        if len(entries) > 1 and entries[-2].message.sort_key() > message.sort_key():
            entries.sort(key=lambda e: e.message.sort_key())
        del entries[:-MESSAGES_PER_CONVERSATION_MAX]
        if unread and not mine:
            self._unread_keys.add(message.key)
            conversation.unread += 1
        return conversation

    def update_report(self, correspondent: str, key: str, report: SendReport) -> None:
        """Replace the send report of one of my messages."""
        conversation = self._by_name[correspondent]
        for i, entry in enumerate(conversation.entries):
            if entry.message.key == key:
                conversation.entries[i] = Entry(message=entry.message, mine=True, report=report)

    def get(self, correspondent: str) -> Conversation | None:
        """The conversation with `correspondent`, if any."""
        return self._by_name.get(normalize_address(correspondent))

    def mark_read(self, correspondent: str) -> None:
        """The reader opened this conversation."""
        if (conversation := self.get(correspondent)) is not None:
            conversation.unread = 0

    def ordered(self) -> list[Conversation]:
        """Newest activity first."""
        return sorted(self._by_name.values(), key=lambda c: (-c.last_ms, c.correspondent))

    @property
    def unread_total(self) -> int:
        """Unread messages in all conversations."""
        return sum(c.unread for c in self._by_name.values())

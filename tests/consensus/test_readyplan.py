"""``readyplan.HeldAnnouncements``: which commit announcements a leader holds, drops and releases."""

from __future__ import annotations

from ram.consensus.readyplan import HeldAnnouncements
from ram.consensus.types import Entry, EntryType, Message, MessageType


def append(to: int, commit: int, *, entries: int = 0, index: int = 5) -> Message:
    ents = tuple(Entry(index + 1 + k, 1, EntryType.NORMAL, b"x") for k in range(entries))
    return Message(MessageType.APPEND, 1, to, 1, log_term=1, index=index, entries=ents, commit=commit)


def test_holds_only_empty_appends_newest_per_follower() -> None:
    held = HeldAnnouncements()
    heartbeat = Message(MessageType.HEARTBEAT, 1, 2, 1, commit=4)
    catch_up = append(3, 5, entries=2)
    now = held.hold([append(2, 5), heartbeat, catch_up, append(3, 5)], until=1.0)
    assert now == [heartbeat, catch_up]
    assert held.hold([append(2, 6)], until=2.0) == [] and held.until == 1.0  # the first deadline stands
    assert sorted((m.to, m.commit) for m in held.release()) == [(2, 6), (3, 5)]
    assert not held and held.release() == []


def test_an_append_to_the_same_follower_supersedes_its_announcement() -> None:
    held = HeldAnnouncements()
    held.hold([append(2, 6), append(3, 6)], until=1.0)
    held.supersede([append(2, 6, entries=1, index=6), Message(MessageType.HEARTBEAT, 1, 3, 1, commit=6)])
    # Follower 2's next append carries commit 6; follower 3 only got a heartbeat: its stays held.
    assert [(m.to, m.commit) for m in held.release()] == [(3, 6)]

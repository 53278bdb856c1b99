"""What the IDE saw change in the workspace, remembered until the next turn
tells the model; pure, over a :class:`~runtime.state.Session`.

A ``file_changed`` is coalesced per path and bounded (:data:`MAX_FILE_CHANGES`
paths kept, the rest counted); the next turn starts with one user message
marked :data:`~runtime.prompts.NOTICE_MARK` listing at most
:data:`NOTICE_MAX_PATHS` paths and :data:`NOTICE_MAX_CHARS` characters of
them, the rest as a count. The agents' prompt says what such a message means.
"""

from __future__ import annotations

from runtime import policy
from runtime.llm import ChatMessage
from runtime.prompts import NOTICE_MARK
from runtime.state import Session

MAX_FILE_CHANGES = 256
"""Changed paths a session remembers until its next turn; more are only counted."""
NOTICE_MAX_PATHS = 50
NOTICE_MAX_CHARS = 4000
"""What the model is told of changed files: at most this many paths and
characters of paths; the rest as a count."""


def remember(session: Session, path: str, timestamp: float) -> None:
    """Remember a changed file for the next turn; raises policy.PathRefused
    for a path that is not workspace-relative."""
    normal = policy.workspace_path(path)
    if normal in session.file_changes or len(session.file_changes) < MAX_FILE_CHANGES:
        session.file_changes[normal] = timestamp
    else:
        session.file_changes_dropped += 1


def take(session: Session) -> ChatMessage | None:
    """The notice of the files changed since the last turn (forgetting them), if any."""
    changes = session.file_changes
    if not changes:
        return None
    listed: list[str] = []
    size = 0
    for path in sorted(changes):
        if len(listed) == NOTICE_MAX_PATHS or size + len(path) > NOTICE_MAX_CHARS:
            break
        listed.append(path)
        size += len(path) + 2
    more = len(changes) - len(listed) + session.file_changes_dropped
    listing = ", ".join(listed)
    if more:
        listing += f" and {more} more change{'s' if more != 1 else ''}"
    changes.clear()
    session.file_changes_dropped = 0
    return ChatMessage(
        role="user",
        content=(
            f"{NOTICE_MARK} These files changed in the editor since you last saw "
            f"them: {listing}. Read them again before relying on their contents."
        ),
    )

"""What a client asks of a session, as plain data.

:mod:`runtime.service` turns ``runtime.v1`` client events into these;
:meth:`runtime.conversation.Conversation.handle` reacts to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the runtime must know of the client behind a stream.

    Sent by the gateway in ``OpenSession`` (from the client's profile); every
    event of that stream is handled with them. The default is the strict
    protocol: approval by ``approval_decision``, every IDE-side tool.
    """

    approves_by_result: bool = False
    """The client asks its human and runs the call itself: its ``tool_result``
    for a call awaiting approval is the approval and the result at once, and
    plans it is shown are not waited on."""
    tools: frozenset[str] | None = None
    """The IDE-side tools the client implements; None: all of them."""
    workspace_view: bool = False
    """List the workspace for the agents' prompt at the session's first turn
    (also done for a client that reported its environment)."""


STRICT = ClientOptions()


@dataclass(frozen=True, slots=True)
class UserMessage:
    content: str
    role: str = "user"


@dataclass(frozen=True, slots=True)
class CancelTurn:
    pass


@dataclass(frozen=True, slots=True)
class ToolResult:
    call_id: str
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    call_id: str
    decision: str  # approve | edit | reject
    modified_arguments: dict[str, Any] | None = None
    feedback: str = ""
    always_allow: bool = False
    """With approve: also add the rule that allows such calls to the user's rules."""


@dataclass(frozen=True, slots=True)
class SwitchAgent:
    agent_type: str
    content: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PlanApproval:
    plan_id: str
    decision: str  # approve | reject
    feedback: str = ""


@dataclass(frozen=True, slots=True)
class FileChanged:
    path: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class Undo:
    """Restore the files changed from a turn on; ``turn_id`` empty: the last such turn."""

    turn_id: str = ""


@dataclass(frozen=True, slots=True)
class Environment:
    """Where the IDE runs, as it reports it; an empty field was not reported.

    A live session keeps the latest report in memory only (each connection
    reports it again) and its agents are told in their system prompt
    (:func:`runtime.prompts.system_prompt`). Hashable: prompts are cached by it.
    """

    os: str = ""
    shell: str = ""
    workspace_root: str = ""


@dataclass(frozen=True, slots=True)
class SetModel:
    """Use this model group for the session's model calls from now on
    (one of the operator's ``USER_MODELS``: :mod:`runtime.models`)."""

    model: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the last message the user typed again (:mod:`runtime.reruns`);
    ``keep_changes``: even though the turns replaced changed files not undone."""

    keep_changes: bool = False


@dataclass(frozen=True, slots=True)
class EditMessage:
    """Replace the user message at ``index`` with ``content`` and run from it."""

    index: int
    content: str
    keep_changes: bool = False


@dataclass(frozen=True, slots=True)
class Fork:
    """Copy the session through message ``through`` (None: all) into a new session."""

    through: int | None = None


@dataclass(frozen=True, slots=True)
class Condense:
    """Summarize the session's older turns now (:mod:`runtime.condense`)."""


ClientEvent = (
    Retry
    | EditMessage
    | Fork
    | Undo
    | SetModel
    | Condense
    | UserMessage
    | CancelTurn
    | ToolResult
    | ApprovalDecision
    | SwitchAgent
    | PlanApproval
    | FileChanged
    | Environment
)

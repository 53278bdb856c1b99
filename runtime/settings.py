"""What a :class:`~runtime.conversation.Conversation` is configured with: the
operator's settings every live session of a runtime shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.agent_files import ProjectLimits
from runtime.agents import BUILT_IN, Roster
from runtime.condense import DEFAULT_THRESHOLD
from runtime.dispatch import DEFAULT_MAX_MISTAKES
from runtime.resting import DEFAULT_RESTING_AFTER_S, DEFAULT_RESTING_HISTORY_MB
from runtime.rules import DEFAULT_LIMITS, OperatorLimits
from runtime.tools import DEFAULT_APPROVAL_REQUIRED


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    model: str
    routing_model: str | None = None
    agent_models: Mapping[str, str] = field(default_factory=dict)
    user_models: tuple[str, ...] = ()
    """Groups a user may choose for a session (:mod:`runtime.models`); (): just ``model``."""
    approval_required: frozenset[str] = DEFAULT_APPROVAL_REQUIRED
    max_consecutive_mistakes: int = DEFAULT_MAX_MISTAKES
    """Failed tool calls in a row after which a turn stops and asks the user; 0: never."""
    rule_limits: OperatorLimits = DEFAULT_LIMITS
    """What users' approval rules may auto-approve (the operator's floor)."""
    agents: Roster = BUILT_IN
    """The built-in agents and the operator's file's; a project's add to them."""
    project_limits: ProjectLimits = field(default_factory=ProjectLimits)
    detach_grace: float = 10.0
    """Seconds a streaming turn goes on with no client attached before it is cancelled."""
    subscriber_queue: int = 1024
    """Events buffered per attached stream; a stream that falls further behind
    catches up from the log (see :class:`Subscriber`)."""
    max_replay: int = 100_000
    """A client further behind than this many events is told to reload instead."""
    resting_history_bytes: int = DEFAULT_RESTING_HISTORY_MB * 2**20
    """Bytes of resting sessions' histories a replica keeps in memory; past
    it, those that rested longest are read back at their next event
    (:mod:`runtime.resting`)."""
    resting_after_s: float = DEFAULT_RESTING_AFTER_S
    """Seconds a session must have been idle before its history may rest."""
    condense_threshold: int = DEFAULT_THRESHOLD
    """Percent of the window a prompt fills before older turns are summarized; 0: never."""

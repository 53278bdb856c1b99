"""Retry, edit and fork on a live session: the history branches, the turn runs again.

A retry runs the last message the user typed again; an edit replaces a
message the user typed and runs from it. Either way the message and
everything after it move to a new branch (:mod:`runtime.branches`: kept,
listed by ``ListBranches``), a durable ``session_changed`` event says so,
and the turn starts as if the message had just been sent, by the agent
serving the session now.

The workspace: the replaced turns may have changed files. A re-run over
changes not undone is refused (``changes_not_undone``, naming the turn to
undo and its files), as Roo Code and Cline ask before rewinding a task past
a checkpoint; the user undoes them first, or sends ``keep_changes`` to run
again with the files as they are (Cline's "restore task only"); those
changes then move to the branch with their turns and cannot be undone from
the active history any more.

A branch can be made the active history again (:func:`restore`: REST and
``RestoreBranch`` only); what it replaces becomes a branch in turn, and
the same rule holds for the workspace.

A fork (:mod:`runtime.forks`) makes a new session and is answered, to the
streams attached, with a ``session_changed`` naming it (seq 0: it is not an
event of this session).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import structlog

from runtime import branches
from runtime.commands import STRICT, ClientOptions, EditMessage, Fork, Retry
from runtime.errors import InvalidArgument, Precondition, RuntimeServiceError
from runtime.events import ErrorEvent, Sequenced, SessionChanged
from runtime.state import message_from_record
from runtime.store import Store

if TYPE_CHECKING:
    from runtime.conversation import Conversation

log = structlog.get_logger("runtime.reruns")


async def rerun(
    conversation: Conversation,
    store: Store,
    event: Retry | EditMessage,
    request_id: str | None,
    client: ClientOptions,
) -> SessionChanged:
    """Branch the history and start the turn that runs again; returns the change.

    Raises Precondition while a turn runs, NothingToRerun, ChangesNotUndone;
    InvalidArgument for an edit of a message the user did not type, or
    empty content. Nothing is changed when it raises.
    """
    _check_idle(conversation)
    session = conversation.session
    if isinstance(event, Retry):
        reason, position = "retry", branches.retry_position(session.messages)
        content = session.messages[position].content
    else:
        reason, position = "edit", branches.edit_position(session.messages, event.index)
        content = event.content
        if not content.strip():
            raise InvalidArgument("content must not be empty")
    if not event.keep_changes:
        branches.check_changes(await store.checkpoints.of_session(session.session_id), position)
    await conversation.stream.drain()  # the last step's write is in
    _check_idle(conversation)  # a message from another window may have started one meanwhile
    number = await store.branches.split(session.session_id, position, reason)
    del session.messages[position:]
    del session.message_agents[position:]
    change = SessionChanged(reason, session.session_id, number, position)
    conversation.stream.durable(change)
    log.info("session_branched", session_id=session.session_id, reason=reason, branch=number)
    await conversation.begin_turn(content, request_id, client)
    return change


async def restore(
    conversation: Conversation, store: Store, branch: int, keep_changes: bool
) -> SessionChanged:
    """Make ``branch`` the live session's active history again from its
    position on (:meth:`runtime.branches.Branches.restore`, which says what
    it raises); the messages it replaces become a new branch. No turn runs.
    Raises Precondition while a turn runs."""
    _check_idle(conversation)
    session = conversation.session
    await conversation.stream.drain()
    _check_idle(conversation)
    number, position, restored = await store.branches.restore(
        session.session_id, branch, keep_changes=keep_changes
    )
    session.messages[position:] = [message_from_record(record) for record in restored]
    session.message_agents[position:] = [record.agent for record in restored]
    change = SessionChanged("switch", session.session_id, number, position)
    conversation.stream.durable(change)
    await conversation.stream.flush()
    log.info("session_branch_restored", session_id=session.session_id, branch=branch)
    return change


def _check_idle(conversation: Conversation) -> None:
    if conversation.turn_running:
        raise Precondition("a turn is running; cancel it or wait for it to end")


async def on_event(
    conversation: Conversation,
    store: Store,
    event: Retry | EditMessage | Fork,
    request_id: str | None,
    client: ClientOptions = STRICT,
) -> None:
    """A client's retry, edit or fork; a refusal is an ``error`` event to the streams."""
    try:
        if isinstance(event, Fork):
            await _fork(conversation, store, event)
        else:
            await rerun(conversation, store, event, request_id, client)
    except RuntimeServiceError as exc:
        code, retryable = _code(exc)
        conversation.stream.publish(Sequenced(0, ErrorEvent(code, str(exc), retryable)))


async def _fork(conversation: Conversation, store: Store, event: Fork) -> None:
    session_id = conversation.session.session_id
    await conversation.stream.drain()
    fork = await store.forks.fork(session_id, f"s-{uuid.uuid4().hex}", event.through)
    log.info("session_forked", session_id=session_id, fork_id=fork.id)
    change = SessionChanged("fork", fork.id, 0, fork.message_count)
    conversation.stream.publish(Sequenced(0, change))


def _code(exc: RuntimeServiceError) -> tuple[str, bool]:
    """The ``error`` event's code for a refused retry, edit or fork, and whether to retry."""
    if isinstance(exc, branches.ChangesNotUndone):
        return "changes_not_undone", False
    if isinstance(exc, branches.NothingToRerun):
        return "nothing_to_retry", False
    if isinstance(exc, InvalidArgument):
        return "invalid_message", False
    if isinstance(exc, Precondition):
        return "turn_in_progress", True
    return exc.code, exc.retryable

"""Client profiles: what each kind of IDE is sent, and how it answers; pure.

Two clients speak different dialects of one protocol (docs/GATEWAY.md,
"Client profiles"). Our own (``scripts/chat``, the README's frames) streams
answers as deltas, approves with ``hitl_decision`` and refreshes its token
on the socket. The CodeLab IDE (``codelab-flutter-app``) renders every frame
it gets as a chat bubble, approves locally and answers with ``tool_result``,
never refreshes its token on the socket and implements six tools.

A :class:`ClientProfile` declares one dialect as data; :class:`Profiles`
picks one by the access token's ``client_id`` (``GATEWAY__CLIENT_PROFILES``;
anyone else gets :data:`STRICT`, today's protocol unchanged). Every profile
decision is applied here and only here: :meth:`ClientProfile.opening` (the
Converse options the runtime must know), :class:`FrameShaper` (each
connection's frames, both ways), :meth:`ClientProfile.lifetime` (what
the watchdog reads of the token and the pongs) and
:meth:`ClientProfile.rest_body` (a REST view's JSON, where the client's
shape clashes with ours).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.frames import Frame
from gateway.frames import response_to_frame as frame_for
from gateway.views import Body
from runtime.v1 import runtime_pb2


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """One client's dialect. The defaults are the strict protocol."""

    name: str
    whole_answers: bool = False
    """Send one ``assistant_message`` per model answer, with its whole text,
    when the answer ends (a tool call, the turn's end, any other session
    event), instead of one per delta; a turn's end with no text of its own
    sends nothing."""
    approval: runtime_pb2.ApprovalMode.ValueType = runtime_pb2.APPROVAL_MODE_DECISION
    """``APPROVAL_MODE_TOOL_RESULT``: the client approves by running the call
    (its ``tool_result`` is the approval and the result)."""
    rejections: tuple[str, ...] = ()
    """A ``tool_result`` error starting with one of these is the user's
    rejection of the call: it reaches the runtime as a ``reject`` decision."""
    hidden: frozenset[str] = frozenset()
    """Frame types never sent (the client would show each as an empty bubble)."""
    plans_as_text: bool = False
    """Send a ``plan_update`` as a short Markdown ``assistant_message``."""
    restores_approvals: bool = False
    """The client restores calls awaiting approval from the REST view
    ``/pending-approvals`` when it connects; the ones the runtime offers
    again on attach (``seq`` 0) are not sent, or it would ask twice."""
    tools: frozenset[str] | None = None
    """The IDE-side tools the client implements (None: all); the model is
    offered only these."""
    agent_aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """The client's names for agents (``code``) → ours (``coder``)."""
    switch_runs_turn: bool = True
    """Whether a ``switch_agent``'s ``content`` runs as a message to the new
    agent (the CodeLab IDE puts a label there: "Switched to Coder")."""
    outlives_token: bool = False
    """The socket stays open past the access token's expiry (the client
    never sends ``auth``); revocation (logout, refresh-token reuse) still
    closes it with 4001."""
    pongs_keep_alive: bool = False
    """A pong counts as activity: no idle close while the client answers pings."""
    workspace_view: bool = False
    """The runtime lists the workspace (``list_files``) at a session's first
    turn for the agents' prompt: for a client that does not report its
    ``environment`` (which asks for it too)."""
    diff_in_reason: bool = False
    """The client shows a call's ``reason`` and raw arguments, not
    ``metadata``: the diff a human approves is appended to the reason."""
    rest_lists: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """REST views (by their name in :data:`gateway.rest.VIEWS`) answered with
    one member of our JSON object, a list, instead of the object: the view
    name → the member's key. Every other field a client needs is additive
    (:mod:`gateway.views`); only a clash of shapes is declared here."""

    def opening(
        self, session_id: str, resume_after_seq: int | None = None
    ) -> runtime_pb2.OpenSession:
        """The ``OpenSession`` of this client's stream, with its Converse options."""
        opening = runtime_pb2.OpenSession(
            session_id=session_id,
            approval=self.approval,
            client_tools=sorted(self.tools or ()),
            workspace_view=self.workspace_view,
        )
        if resume_after_seq is not None:
            opening.resume_after_seq = resume_after_seq
        return opening

    def rest_body(self, view: str, body: Body) -> Body | list[Any]:
        """The JSON the REST view named ``view`` answers this client: our
        ``body``, or the member of it :attr:`rest_lists` names; with
        :attr:`diff_in_reason`, a restored approval's reason carries its diff."""
        if self.diff_in_reason and view == "approvals":
            for approval in body.get("pending_approvals", ()):
                diff = approval.get("metadata", {}).get("diff")
                if diff:
                    approval["reason"] = _with_diff(approval["reason"], diff)
        member = self.rest_lists.get(view)
        return body if member is None else list(body[member])

    def lifetime(
        self, expires_at: float, last_activity: float, last_pong: float
    ) -> tuple[float | None, float]:
        """What the watchdog reads: the token's expiry (None: it does not
        bound the socket) and the moment of the last activity."""
        return (
            None if self.outlives_token else expires_at,
            max(last_activity, last_pong) if self.pongs_keep_alive else last_activity,
        )


STRICT = ClientProfile("strict")
"""Our protocol as the README describes it: every client not listed."""

CODELAB_IDE_TOOLS = frozenset(
    {
        "read_file",
        "write_file",
        "list_files",
        "search_in_code",
        "create_directory",
        "execute_command",
    }
)
"""What ``codelab_ide`` runs (``ToolExecutorDataSourceImpl._supportedTools``,
less its ``run_command`` alias)."""

CODELAB_IDE = ClientProfile(
    "codelab-ide",
    whole_answers=True,
    approval=runtime_pb2.APPROVAL_MODE_TOOL_RESULT,
    # Failure.userRejected's message (execute_tool.dart), and the rejection
    # of a restored approval (AgentChatBloc._rejectRestoredTool).
    rejections=("Операция отклонена: ", "User rejected: "),
    # session_changed: it never sends retry, edit_message or fork, and would
    # show a branch made by REST as an empty bubble; context_condensed likewise.
    hidden=frozenset({"session_info", "plan_progress", "session_changed", "context_condensed"}),
    plans_as_text=True,
    restores_approvals=True,
    tools=CODELAB_IDE_TOOLS,
    agent_aliases=MappingProxyType({"code": "coder"}),
    switch_runs_turn=False,
    outlives_token=True,
    pongs_keep_alive=True,
    # ToolApprovalDialog shows `reason` and the arguments as JSON.
    diff_in_reason=True,
    workspace_view=True,
    # GatewayApi.listAgents: (response.data as List) (gateway_api.dart).
    rest_lists=MappingProxyType({"list_agents": "agents"}),
)
"""The CodeLab IDE (``pese-git/codelab_ide``, ``agent_chat_bloc.dart``)."""

BUILT_IN: Mapping[str, ClientProfile] = MappingProxyType(
    {profile.name: profile for profile in (STRICT, CODELAB_IDE)}
)
"""The profiles ``GATEWAY__CLIENT_PROFILES`` may name."""


def parse_assignment(entry: str) -> tuple[str, str]:
    """``client_id=profile`` → the pair; ValueError for anything else."""
    client_id, sep, name = (part.strip() for part in entry.partition("="))
    if not sep or not client_id or not name:
        raise ValueError(f"{entry!r} is not client_id=profile")
    if name not in BUILT_IN:
        raise ValueError(f"{entry!r} names no profile; one of {', '.join(BUILT_IN)}")
    return client_id, name


class Profiles:
    """The profile of each client id; :data:`STRICT` for any other."""

    def __init__(self, assignments: tuple[str, ...]) -> None:
        pairs = [parse_assignment(entry) for entry in assignments]
        self._by_client = {client_id: BUILT_IN[name] for client_id, name in pairs}

    def for_client(self, client_id: str | None) -> ClientProfile:
        if client_id is None:
            return STRICT
        return self._by_client.get(client_id, STRICT)


class FrameShaper:
    """One connection's frames, shaped for its profile; no I/O.

    :meth:`outgoing` turns each runtime event into the frames to send (none,
    one, or a held answer followed by the event's own); :meth:`flush` gives
    what is held when the stream ends. :meth:`incoming` reshapes an IDE
    action before it goes to the runtime.
    """

    def __init__(self, profile: ClientProfile) -> None:
        self.profile = profile
        self._held: list[str] = []
        self._held_seq = 0

    def outgoing(self, response: runtime_pb2.ConverseResponse) -> list[Frame]:
        """The frames for one runtime event (empty for an unknown one)."""
        profile = self.profile
        kind = response.WhichOneof("event")
        if kind == "assistant_delta" and profile.whole_answers:
            self._held.append(response.assistant_delta.text)
            self._held_seq = response.seq
            return []
        frame = frame_for(response)
        if frame is None:
            return []
        if kind == "tool_call" and profile.diff_in_reason and frame.get("metadata"):
            diff = frame["metadata"]["diff"]
            if diff:
                frame["reason"] = _with_diff(frame["reason"], diff)
        if response.seq == 0 and kind != "session_opened":
            # Not an event of the answer (a refusal, a call offered again):
            # a held answer stays whole.
            return [] if self._hidden(frame, offered_again=True) else [frame]
        if kind == "turn_done" and profile.whole_answers:
            if not self._held:
                return []  # no empty final bubble
            self._held_seq = response.seq  # the frame carries the turn's end too
            answer = self._answer(final=True, metadata=frame["metadata"])
            if "context" in frame:
                answer["context"] = frame["context"]  # the IDE's decoder ignores it
            return [answer]
        frames = self.flush()
        if kind == "plan_update" and profile.plans_as_text:
            frames.append(_plan_message(response.plan_update, response.seq))
        elif not self._hidden(frame):
            frames.append(frame)
        return frames

    def flush(self) -> list[Frame]:
        """The held answer, if any, as one frame that does not end the turn."""
        return [self._answer(final=False)] if self._held else []

    def local(self, frame: Frame) -> list[Frame]:
        """A frame the gateway makes itself, if the client is to see it."""
        return [] if self._hidden(frame) else [frame]

    def _answer(self, *, final: bool, metadata: Frame | None = None) -> Frame:
        text = "".join(self._held)
        self._held.clear()
        frame: Frame = {
            "type": "assistant_message",
            "token": text,
            "content": text,
            "is_final": final,
            "seq": self._held_seq,
        }
        if metadata is not None:
            frame["metadata"] = metadata
        return frame

    def _hidden(self, frame: Frame, *, offered_again: bool = False) -> bool:
        profile = self.profile
        if frame["type"] in profile.hidden:
            return True
        return (
            offered_again
            and profile.restores_approvals
            and frame["type"] == "tool_call"
            and bool(frame["requires_approval"])
        )

    def incoming(self, action: runtime_pb2.ConverseRequest) -> runtime_pb2.ConverseRequest:
        """The action as the runtime is to see it."""
        profile = self.profile
        kind = action.WhichOneof("event")
        if kind == "tool_result" and profile.rejections:
            result = action.tool_result
            if result.WhichOneof("outcome") == "error" and result.error.startswith(
                profile.rejections
            ):
                return runtime_pb2.ConverseRequest(
                    approval_decision=runtime_pb2.ApprovalDecision(
                        call_id=result.call_id,
                        decision=runtime_pb2.DECISION_REJECT,
                        feedback=result.error[:8192],
                    )
                )
        if kind == "switch_agent":
            switch = action.switch_agent
            switch.agent_type = profile.agent_aliases.get(switch.agent_type, switch.agent_type)
            if not profile.switch_runs_turn:
                switch.content = ""
        return action


def _with_diff(reason: str, diff: str) -> str:
    return f"{reason}\n\n{diff}" if reason else diff


_STEP_MARKS = {"done": "x", "skipped": "x"}


def _plan_message(plan: runtime_pb2.PlanUpdate, seq: int) -> Frame:
    """A plan as a short Markdown assistant message."""
    lines = ["**Plan**", ""]
    for step in plan.steps:
        mark = _STEP_MARKS.get(step.status, " ")
        note = "" if step.status in ("pending", "done") else f" ({step.status.replace('_', ' ')})"
        lines.append(f"- [{mark}] {step.description or step.id}{note}")
    text = "\n".join(lines)
    return {
        "type": "assistant_message",
        "token": text,
        "content": text,
        "is_final": False,
        "seq": seq,
    }

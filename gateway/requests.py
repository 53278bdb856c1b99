"""What each REST view asks the runtime, built from the request's path,
query and body; pure. A parameter that does not fit raises
:class:`~gateway.errors.InvalidQuery` (a 400 naming it), before the runtime
is called. :mod:`gateway.rest` pairs each builder with its view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidQuery
from runtime.v1 import runtime_pb2

Query = Mapping[str, list[str]]

_MAX_TITLE_CHARS = 200
_MAX_PAGE_TOKEN_CHARS = 1024
_MAX_PAGE_SIZE_DIGITS = 4
_RULE_FIELDS = frozenset({"allow", "deny", "max_auto_approvals_per_turn"})
_MAX_CAP = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Params:
    """What a view's request is built from.

    ``session_id`` is the path's (``""`` when it has none); ``body`` the
    request's JSON object, or None for a request without a body.
    """

    session_id: str
    query: Query
    body: Mapping[str, Any] | None = None


def single(query: Query, name: str) -> str | None:
    """The one value of query parameter ``name`` (None: absent); InvalidQuery when repeated."""
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidQuery("invalid_request", f"{name} is given more than once")
    return values[0]


def list_sessions(params: Params) -> runtime_pb2.ListSessionsRequest:
    query = params.query
    size = single(query, "page_size") or "0"
    if not size.isdigit() or len(size) > _MAX_PAGE_SIZE_DIGITS:
        raise InvalidQuery("invalid_page_size", "page_size must be a non-negative integer")
    token = single(query, "page_token") or ""
    if len(token) > _MAX_PAGE_TOKEN_CHARS:
        raise InvalidQuery("invalid_page_token", "page_token is too long")
    return runtime_pb2.ListSessionsRequest(page_size=int(size), page_token=token)


def _checked_title(title: str) -> str:
    if len(title) > _MAX_TITLE_CHARS:
        raise InvalidQuery("invalid_title", f"title is longer than {_MAX_TITLE_CHARS} characters")
    return title


def create_session(params: Params) -> runtime_pb2.CreateSessionRequest:
    query = params.query
    title = _checked_title(single(query, "title") or "")
    if "session_id" in query or "id" in query:
        # The server picks the id (128 random bits): a client-chosen one
        # would have to be refused when taken, and so would tell whoever
        # asks that someone else's session has it.
        raise InvalidQuery(
            "invalid_request", "the server chooses a new session's id; send only title"
        )
    return runtime_pb2.CreateSessionRequest(title=title)


def undo(params: Params) -> runtime_pb2.UndoTurnRequest:
    turn_id = single(params.query, "turn_id") or ""
    if len(turn_id) > 32 or not (turn_id == "" or turn_id.isdigit()):
        raise InvalidQuery("invalid_turn_id", "turn_id is a turn's id from /checkpoints")
    return runtime_pb2.UndoTurnRequest(session_id=params.session_id, turn_id=turn_id)


def fork(params: Params) -> runtime_pb2.ForkSessionRequest:
    request = runtime_pb2.ForkSessionRequest(session_id=params.session_id)
    message = single(params.query, "message")
    if message is not None:
        if not message.isdigit() or len(message) > 9:
            raise InvalidQuery("invalid_message", "message is a position from /history, from 0")
        request.through_message = int(message)
    return request


def _keep_changes(query: Query) -> bool:
    value = single(query, "keep_changes") or "false"
    if value not in ("true", "false"):
        raise InvalidQuery("invalid_keep_changes", "keep_changes is true or false")
    return value == "true"


def retry(params: Params) -> runtime_pb2.RetryTurnRequest:
    return runtime_pb2.RetryTurnRequest(
        session_id=params.session_id, keep_changes=_keep_changes(params.query)
    )


def restore_branch(params: Params) -> runtime_pb2.RestoreBranchRequest:
    branch = single(params.query, "branch")
    if branch is None or not branch.isdigit() or len(branch) > 9:
        raise InvalidQuery("invalid_branch", "branch is a branch's number from /branches")
    return runtime_pb2.RestoreBranchRequest(
        session_id=params.session_id,
        branch=int(branch),
        keep_changes=_keep_changes(params.query),
    )


_EDIT_FIELDS = frozenset({"content", "keep_changes"})


def edit_message(params: Params) -> runtime_pb2.EditUserMessageRequest:
    """``?message=N`` (a position from /history) and ``{"content": …}`` as the body."""
    message = single(params.query, "message")
    if message is None or not message.isdigit() or len(message) > 9:
        raise InvalidQuery("invalid_message", "message is your message's position from /history")
    body = params.body
    if body is None:
        raise InvalidQuery(
            "invalid_body",
            'send the new text as a JSON body, e.g. {"content": "…"} (through the front door, '
            "or on the gateway's REST port: the WebSocket port reads no request bodies)",
        )
    unknown = sorted(set(body) - _EDIT_FIELDS)
    content = body.get("content")
    keep = body.get("keep_changes", False)
    if unknown or not isinstance(content, str) or not content.strip() or not isinstance(keep, bool):
        raise InvalidQuery(
            "invalid_body",
            'send {"content": "the new text", "keep_changes": false}; content must not be empty',
        )
    return runtime_pb2.EditUserMessageRequest(
        session_id=params.session_id, index=int(message), content=content, keep_changes=keep
    )


_UPDATABLE = frozenset({"title", "model"})
_MAX_MODEL_CHARS = 128


def update_session(params: Params) -> runtime_pb2.UpdateSessionRequest:
    body = params.body
    if body is None:
        raise InvalidQuery(
            "invalid_body",
            'send the change as a JSON body, e.g. {"title": "…"} (through the front door, '
            "or on the gateway's REST port: the WebSocket port reads no request bodies)",
        )
    unknown = sorted(set(body) - _UPDATABLE)
    if unknown:
        raise InvalidQuery(
            "invalid_body", f"only title and model can be changed, not {', '.join(unknown)}"
        )
    request = runtime_pb2.UpdateSessionRequest(session_id=params.session_id)
    if "title" in body:
        title = body["title"]
        if not isinstance(title, str):
            raise InvalidQuery("invalid_title", "title must be a string")
        request.title = _checked_title(title)
    if "model" in body:
        request.model = _checked_model(body["model"])
    return request


def _checked_model(model: object) -> str:
    """A model group's name; which groups are offered is the runtime's to say (400 too)."""
    if not isinstance(model, str) or not 0 < len(model) <= _MAX_MODEL_CHARS:
        raise InvalidQuery(
            "invalid_model", f"model must be a group's name, 1 to {_MAX_MODEL_CHARS} characters"
        )
    return model


def list_models(params: Params) -> runtime_pb2.ListModelsRequest:
    """All offered groups; with ``?session_id=``, that session's choice too."""
    return runtime_pb2.ListModelsRequest(session_id=single(params.query, "session_id") or "")


def list_agents(params: Params) -> runtime_pb2.ListAgentsRequest:
    """The runtime's agents; with ``?session_id=``, that session's (its project's too)."""
    return runtime_pb2.ListAgentsRequest(session_id=single(params.query, "session_id") or "")


def update_instructions(params: Params) -> runtime_pb2.UpdateInstructionsRequest:
    """``{"text": "…"}``: the user's custom instructions, whole ("" for none)."""
    body = params.body
    if body is None or set(body) != {"text"} or not isinstance(body["text"], str):
        raise InvalidQuery(
            "invalid_body",
            'send the instructions as a JSON body, {"text": "..."} ("" for none), through '
            "the front door or on the gateway's REST port",
        )
    return runtime_pb2.UpdateInstructionsRequest(text=body["text"])


def update_rules(params: Params) -> runtime_pb2.UpdateApprovalRulesRequest:
    """The shape of a rules body; the rules themselves are the runtime's to check."""
    body = params.body
    if body is None:
        raise InvalidQuery(
            "invalid_body",
            'send the rules as a JSON body, e.g. {"allow": ["execute_command(pytest:*)"], '
            '"deny": []} (through the front door, or on the gateway\'s REST port: the '
            "WebSocket port reads no request bodies)",
        )
    unknown = sorted(set(body) - _RULE_FIELDS)
    if unknown:
        raise InvalidQuery(
            "invalid_body",
            f"unknown fields {', '.join(unknown)}: send allow, deny, max_auto_approvals_per_turn",
        )
    rules = runtime_pb2.ApprovalRules()
    for name in ("allow", "deny"):
        texts = body.get(name)
        texts = [] if texts is None else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidQuery("invalid_body", f"{name} must be a list of rule strings")
        getattr(rules, name).extend(texts)
    cap = body.get("max_auto_approvals_per_turn")
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= _MAX_CAP:
            raise InvalidQuery(
                "invalid_body",
                "max_auto_approvals_per_turn must be a whole number from 0, or null "
                "(the operator's cap)",
            )
        rules.max_auto_approvals_per_turn = cap
    return runtime_pb2.UpdateApprovalRulesRequest(rules=rules)

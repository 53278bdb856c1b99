"""Changes to the workspace, planned without I/O: read first, then change, with a checkpoint.

An agent's change to the workspace (``write_file``, ``delete_file``,
``move_file``, and the edits ``apply_diff`` and ``insert_content``, which no
IDE implements) is run by the runtime as IDE calls it issues on the model's
behalf, *sub-calls*: first a ``read_file`` of every path the change touches,
so the previous state of each (its content, or its absence) is known before
anything changes; then the one call that makes the change, offered with the
unified diff a human approves. A planned step is a :class:`SubCall` (what to
offer the IDE next) or :class:`Done` (how to answer the model's call, and the
:class:`~runtime.records.Checkpoint` rows that make the change undoable).

The plan's state travels with each sub-call as a JSON object (its ``job``,
stored with the call's row), so a change waiting for the IDE or a human
survives a restart like any tool call. :func:`begin` starts a change,
:func:`advance` takes a sub-call's answer. :mod:`runtime.undo` plans the
reverse through the same two functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from runtime import edits
from runtime.records import Checkpoint

CHANGE_TOOLS = frozenset({"write_file", "delete_file", "move_file", "apply_diff", "insert_content"})
"""The tools run as a checkpointed change; every other tool is offered as it is."""

MAX_DIFF_BYTES = 64 * 1024
"""A diff shown for approval is cut here (the change itself is exact)."""
MODEL_DIFF_BYTES = 4096
"""An edit's answer to the model carries its diff up to this size."""

_ABSENT = re.compile(r"not found|no such file|does not exist|is not a file|enoent", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SubCall:
    """An IDE call to offer on the model's call's behalf."""

    tool_name: str
    arguments: dict[str, Any]
    requires_approval: bool
    reason: str
    job: dict[str, Any]
    diff: str = ""


@dataclass(frozen=True, slots=True)
class Done:
    """The model's call is answered with ``payload`` and ends as ``status``."""

    payload: dict[str, Any]
    status: str
    checkpoints: list[Checkpoint] = field(default_factory=list)


Planned = SubCall | Done


def paths_of(tool_name: str, arguments: dict[str, Any]) -> list[str]:
    """The workspace paths a change reads first, in order."""
    if tool_name == "move_file":
        return [arguments["source"], arguments["destination"]]
    return [arguments["path"]]


def begin(
    tool_name: str, arguments: dict[str, Any], *, requires_approval: bool, reason: str, turn: int
) -> Planned:
    """Start a change the model asked for: read the first path it touches."""
    job = {
        "kind": "change",
        "tool": tool_name,
        "args": arguments,
        "approval": requires_approval,
        "reason": reason,
        "turn": turn,
        "before": {},
    }
    return _read_next(job)


def _read_next(job: dict[str, Any]) -> Planned:
    for path in paths_of(job["tool"], job["args"]):
        if path not in job["before"]:
            return SubCall(
                "read_file", {"path": path}, False, "", {**job, "step": "read", "reading": path}
            )
    return _change(job)


def read_outcome(payload: dict[str, Any]) -> str | BaseException | None:
    """A ``read_file`` answer as a file's state: its text, None (absent), or the error."""
    if "error" in payload:
        error = str(payload["error"])
        return None if _ABSENT.search(error) else ValueError(error)
    result = payload.get("result")
    content = result.get("content") if isinstance(result, dict) else None
    if not isinstance(content, str):
        return ValueError("the IDE's read_file answer has no text content")
    return content


def advance(job: dict[str, Any], payload: dict[str, Any], status: str) -> Planned:
    """Take the answer to a sub-call planned with ``job``: the next step of its change."""
    if job["step"] == "read":
        path = job["reading"]
        state = read_outcome(payload)
        if isinstance(state, BaseException):
            return Done(
                {
                    "error": f"could not read {path} to record its previous state, so it was "
                    f"not changed: {state}"
                },
                "failed",
            )
        return _read_next({**job, "before": {**job["before"], path: state}})
    # The change itself was answered: pass the IDE's answer on to the model.
    if status != "completed":
        return Done(payload, status)
    result = dict(payload)
    if job["tool"] in ("apply_diff", "insert_content"):
        added, removed = edits.diff_stats(job["diff"])
        answer = {"path": job["args"]["path"], "changed": f"+{added} -{removed} lines"}
        if len(job["diff"]) <= MODEL_DIFF_BYTES:
            answer["diff"] = job["diff"]
        result = {"result": answer}
    checkpoints = [
        Checkpoint(job["turn"], path, job["before"][path], after)
        for path, after in job["after"].items()
    ]
    return Done(result, status, checkpoints)


def _change(job: dict[str, Any]) -> Planned:
    """Every path was read: compute the change and offer the call that makes it."""
    tool, args, before = job["tool"], job["args"], job["before"]
    match tool:
        case "write_file":
            after = {args["path"]: args["content"]}
            call = ("write_file", args)
        case "delete_file":
            after = {args["path"]: None}
            call = ("delete_file", args)
        case "move_file":
            source, destination = args["source"], args["destination"]
            after = {source: None, destination: before[source]}
            call = ("move_file", args)
        case _:
            path = args["path"]
            current = before[path]
            if current is None:
                return Done(
                    {"error": f"{path} does not exist; create it with write_file"}, "failed"
                )
            try:
                if tool == "apply_diff":
                    edited = edits.apply_blocks(current, args["blocks"])
                else:
                    edited = edits.insert_lines(current, args["line"], args["content"])
            except edits.EditFailed as exc:
                return Done({"error": f"{path} was not changed: {exc}"}, "failed")
            after = {path: edited}
            call = ("write_file", {"path": path, "content": edited})
    if tool == "move_file":
        diff = f"rename from {args['source']}\nrename to {args['destination']}\n"
    else:
        diff = "".join(
            edits.unified_diff(p, before.get(p), new, limit=MAX_DIFF_BYTES)
            for p, new in after.items()
        )
    tool_name, arguments = call
    return SubCall(
        tool_name,
        arguments,
        job["approval"],
        job["reason"],
        {**job, "step": "change", "after": after, "diff": diff},
        diff,
    )


def edited(
    job: dict[str, Any], offered: dict[str, Any], arguments: dict[str, Any]
) -> dict[str, Any] | str:
    """The job of a sub-call a human edited to ``arguments``, or why the edit is refused.

    Only the content a change writes may be edited: its checkpoint then
    records the edited content. An undo's restores are not edited.
    """
    if job["kind"] != "change" or job["step"] != "change":
        return "only the content an agent's change writes can be edited; approve or reject"
    if {k: v for k, v in arguments.items() if k != "content"} != {
        k: v for k, v in offered.items() if k != "content"
    }:
        return "an edit may change only the content written, not the paths"
    if "content" not in arguments:
        return job
    path = arguments["path"]
    diff = edits.unified_diff(path, job["before"][path], arguments["content"], limit=MAX_DIFF_BYTES)
    return {**job, "after": {path: arguments["content"]}, "diff": diff}

"""Undo, planned without I/O: the files changed from a turn on, put back as they were.

:func:`plan` picks the checkpoints to undo (every one not undone yet from a
turn on) and gives, per file, the state to restore (the file before its
first change) and the state the runtime left it in (after its last change).
The undo then runs like a change (:mod:`runtime.changes`), one file at a
time: a ``read_file`` first, so a file changed since the agent wrote it is
not overwritten silently (its restore waits for a human's approval, and its
``reason`` says why), then a ``write_file`` of the old content, or a
``delete_file`` of a file the turn created. A file already as it was is left
alone. The plan rides on the undo's own call (its ``job``); each sub-call
carries only where it is.
"""

from __future__ import annotations

from typing import Any

from runtime import edits
from runtime.changes import MAX_DIFF_BYTES, Done, Planned, SubCall, read_outcome
from runtime.errors import Precondition
from runtime.records import Checkpoint

MAX_UNDO_BYTES = 16_000_000
"""The old content one undo may restore at most; a larger undo is refused (undo
later turns first)."""


class NothingToUndo(Precondition):
    """There is no change to undo from the turn asked for; the message says why."""


def turns(checkpoints: list[Checkpoint]) -> dict[int, list[Checkpoint]]:
    """The checkpoints by the turn that made them, turns oldest first."""
    by_turn: dict[int, list[Checkpoint]] = {}
    for c in sorted(checkpoints, key=lambda c: (c.turn, c.id)):
        by_turn.setdefault(c.turn, []).append(c)
    return by_turn


def file_changes(checkpoints: list[Checkpoint]) -> list[tuple[str, str]]:
    """One turn's files, in the order first changed, each ``created``,
    ``modified`` or ``deleted`` (its state before the turn against after it)."""
    first: dict[str, str | None] = {}
    last: dict[str, str | None] = {}
    for c in checkpoints:
        first.setdefault(c.path, c.before)
        last[c.path] = c.after
    changes = []
    for path, before in first.items():
        after = last[path]
        if before is None:
            change = "created" if after is not None else "unchanged"
        else:
            change = "deleted" if after is None else "modified"
        changes.append((path, change))
    return changes


def plan(checkpoints: list[Checkpoint], turn_id: str) -> tuple[int, list[dict[str, Any]]]:
    """The first turn undone and, per file in the order first changed, what to restore.

    ``turn_id`` empty means the last turn with a change not undone yet.
    Raises NothingToUndo.
    """
    active = [c for c in checkpoints if not c.undone]
    if turn_id:
        try:
            first = int(turn_id)
        except ValueError:
            raise NothingToUndo(f"unknown turn {turn_id!r}") from None
        if not any(c.turn == first for c in checkpoints):
            raise NothingToUndo(f"turn {turn_id!r} changed no file")
    elif active:
        first = max(c.turn for c in active)
    else:
        raise NothingToUndo("no change of this session is left to undo")
    files: dict[str, dict[str, Any]] = {}
    for c in active:
        if c.turn < first:
            continue
        entry = files.setdefault(c.path, {"path": c.path, "target": c.before, "ids": []})
        entry["expected"] = c.after
        entry["ids"].append(c.id)
    if not files:
        raise NothingToUndo(f"the changes of turn {first} and later are already undone")
    size = sum(len(f["target"] or "") + len(f["expected"] or "") for f in files.values())
    if size > MAX_UNDO_BYTES:
        raise NothingToUndo(
            f"undoing from turn {first} would restore {size} bytes, more than "
            f"{MAX_UNDO_BYTES}; undo later turns first"
        )
    return first, list(files.values())


def begin(files: list[dict[str, Any]], *, approval: bool, can_delete: bool) -> Planned:
    """The first step of an undo whose plan (``files``) rides on its own call."""
    job = {
        "kind": "undo",
        "tool": "undo",
        "approval": approval,
        "can_delete": can_delete,
        "i": 0,
        "restored": [],
        "failed": [],
        "undone_ids": [],
    }
    return _next(files, job)


def _next(files: list[dict[str, Any]], job: dict[str, Any]) -> Planned:
    i = job["i"]
    if i == len(files):
        outcome = {k: job[k] for k in ("restored", "failed", "undone_ids")}
        return Done(outcome, "completed")
    path = files[i]["path"]
    return SubCall("read_file", {"path": path}, False, "", {**job, "step": "read", "diff": ""})


def advance(
    files: list[dict[str, Any]], job: dict[str, Any], payload: dict[str, Any], status: str
) -> Planned:
    """Take the answer to an undo's sub-call: restore this file, or go on to the next."""
    entry = files[job["i"]]
    path = entry["path"]
    if job["step"] == "restore":
        if status == "completed":
            label = path if entry["target"] is not None else f"{path} (deleted)"
            return _done_with(files, job, restored=label, ids=entry["ids"])
        error = payload.get("error") or status
        return _done_with(files, job, failed=(path, str(error)))
    state = read_outcome(payload)
    if isinstance(state, BaseException):
        return _done_with(files, job, failed=(path, f"could not read it: {state}"))
    target = entry["target"]
    if state == target:
        label = f"{path} (already as it was)"
        return _done_with(files, job, restored=label, ids=entry["ids"])
    changed_since = state != entry["expected"]
    if target is None and not job["can_delete"]:
        return _done_with(files, job, failed=(path, "this IDE cannot delete files"))
    if target is None:
        call: tuple[str, dict[str, Any]] = ("delete_file", {"path": path})
    else:
        call = ("write_file", {"path": path, "content": target, "create_dirs": True})
    if changed_since:
        reason = f"{path} changed since the agent wrote it: undoing discards those changes"
    else:
        reason = f"undo restores {path}"
    diff = edits.unified_diff(path, state, target, limit=MAX_DIFF_BYTES)
    return SubCall(
        call[0],
        call[1],
        job["approval"] or changed_since,
        reason,
        {**job, "step": "restore", "diff": diff, "changed_since": changed_since},
        diff,
    )


def _done_with(
    files: list[dict[str, Any]],
    job: dict[str, Any],
    *,
    restored: str | None = None,
    ids: list[int] | None = None,
    failed: tuple[str, str] | None = None,
) -> Planned:
    job = {**job, "i": job["i"] + 1}
    if restored is not None:
        job["restored"] = [*job["restored"], restored]
        job["undone_ids"] = [*job["undone_ids"], *(ids or ())]
    if failed is not None:
        job["failed"] = [*job["failed"], list(failed)]
    return _next(files, job)


def summary(outcome: dict[str, Any]) -> str:
    """What the user is told when the undo ends."""
    lines = []
    if outcome["restored"]:
        lines.append("Restored: " + ", ".join(outcome["restored"]) + ".")
    for path, error in outcome["failed"]:
        lines.append(f"Not restored: {path} ({error}).")
    if not lines:
        lines.append("Nothing was restored.")
    return "Undo: " + " ".join(lines)

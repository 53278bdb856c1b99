"""The IDE-side tools, executed inside one workspace folder and never outside it.

:class:`Workspace` runs the tool calls the agent sends (``read_file``,
``write_file``, ``list_files``, ``search_in_code``, ``create_directory``,
``execute_command``, ``delete_file``, ``move_file``) and returns the result
object for ``tool_result``. Every path is resolved (symlinks included) and
must stay inside the root: the runtime checks paths too, but an IDE must not
trust the server with its disk either. Failures raise :class:`ToolFailed`,
whose message becomes the ``tool_result`` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import shutil
from pathlib import Path
from typing import Any

MAX_READ_BYTES = 1_000_000
MAX_OUTPUT_BYTES = 64_000
MAX_LISTED = 2000
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__"}


class ToolFailed(Exception):
    """The tool could not do what was asked; the message says why."""


class Workspace:
    """Executes IDE tools under ``root``."""

    def __init__(self, root: Path, *, command_timeout: float = 60.0) -> None:
        self.root = root.resolve()
        self._command_timeout = command_timeout

    def path(self, relative: str) -> Path:
        """The absolute path of ``relative``; ToolFailed if it leaves the root."""
        if not isinstance(relative, str) or "\x00" in relative:
            raise ToolFailed("invalid path")
        candidate = (self.root / relative.replace("\\", "/")).resolve()
        if candidate != self.root and not candidate.is_relative_to(self.root):
            raise ToolFailed(f"{relative!r} is outside the workspace")
        return candidate

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    async def run(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Execute one tool call; returns the result object or raises ToolFailed."""
        handler = getattr(self, f"_tool_{tool_name}", None)
        if handler is None:
            raise ToolFailed(f"this IDE has no tool {tool_name!r}")
        try:
            result: dict[str, Any] = await handler(**arguments)
        except TypeError as exc:
            raise ToolFailed(f"bad arguments for {tool_name}: {exc}") from None
        except OSError as exc:
            raise ToolFailed(f"{tool_name}: {exc.strerror or exc}") from None
        return result

    async def _tool_read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None
    ) -> dict[str, Any]:
        target = self.path(path)
        if not target.is_file():
            raise ToolFailed(f"{path!r} is not a file")
        ranged = start_line is not None or end_line is not None
        if not ranged and target.stat().st_size > MAX_READ_BYTES:
            raise ToolFailed(
                f"{path!r} is larger than {MAX_READ_BYTES} bytes; read a line range "
                "(start_line, end_line)"
            )
        first = (start_line or 1) - 1
        kept: list[str] = []
        size = total = 0
        # newline="": the text exactly as stored (CRLF stays CRLF, a missing final
        # newline stays missing), so what the runtime remembers of a file can
        # restore it byte for byte (undo).
        with target.open(encoding="utf-8", errors="replace", newline="") as lines:
            # Line by line: a range of a big file costs only that range.
            for total, line in enumerate(lines, start=1):
                if total > first and (end_line is None or total <= end_line):
                    size += len(line)
                    if size > MAX_READ_BYTES:
                        raise ToolFailed(
                            f"lines {first + 1}-{total} of {path!r} pass {MAX_READ_BYTES} "
                            "bytes; read a smaller range"
                        )
                    kept.append(line)
        return {"path": self._relative(target), "content": "".join(kept), "total_lines": total}

    async def _tool_write_file(
        self, path: str, content: str, create_dirs: bool = False
    ) -> dict[str, Any]:
        target = self.path(path)
        if target.is_dir():
            raise ToolFailed(f"{path!r} is a directory")
        if create_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
        elif not target.parent.is_dir():
            raise ToolFailed(f"the directory of {path!r} does not exist (create_dirs is false)")
        existed = target.exists()
        # Exactly these characters, no newline translation: an undo restores bytes.
        target.write_text(content, encoding="utf-8", newline="")
        return {
            "path": self._relative(target),
            "bytes": len(content.encode()),
            "created": not existed,
        }

    async def _tool_list_files(
        self,
        path: str = ".",
        recursive: bool = False,
        pattern: str | None = None,
        include_hidden: bool = False,
    ) -> dict[str, Any]:
        base = self.path(path)
        if not base.is_dir():
            raise ToolFailed(f"{path!r} is not a directory")
        found: list[str] = []
        truncated = False
        for entry in self._walk(base, recursive):
            relative = self._relative(entry)
            if not include_hidden and any(
                part.startswith(".") for part in entry.relative_to(base).parts
            ):
                continue
            if pattern and not (
                fnmatch.fnmatch(entry.name, pattern) or fnmatch.fnmatch(relative, pattern)
            ):
                continue
            found.append(relative + ("/" if entry.is_dir() else ""))
            if len(found) >= MAX_LISTED:
                truncated = True
                break
        return {"path": self._relative(base), "files": sorted(found), "truncated": truncated}

    def _walk(self, base: Path, recursive: bool) -> list[Path]:
        if not recursive:
            return sorted(base.iterdir())
        entries: list[Path] = []
        for directory, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
            entries.extend(Path(directory) / name for name in sorted(filenames))
        return entries

    async def _tool_search_in_code(
        self,
        query: str,
        path: str = ".",
        file_pattern: str | None = None,
        case_sensitive: bool = False,
        regex: bool = False,
        max_results: int = 100,
    ) -> dict[str, Any]:
        flags = 0 if case_sensitive else re.IGNORECASE
        try:
            pattern = re.compile(query if regex else re.escape(query), flags)
        except re.error as exc:
            raise ToolFailed(f"invalid regular expression: {exc}") from None
        base = self.path(path)
        files = [base] if base.is_file() else self._walk(base, recursive=True)
        matches: list[dict[str, Any]] = []
        for file in files:
            if len(matches) >= max_results:
                break
            if file_pattern and not fnmatch.fnmatch(file.name, file_pattern):
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if file.stat().st_size > MAX_READ_BYTES:
                    continue
                for number, line in enumerate(file.read_text().splitlines(), start=1):
                    if pattern.search(line):
                        matches.append(
                            {"path": self._relative(file), "line": number, "text": line[:500]}
                        )
                        if len(matches) >= max_results:
                            break
        return {"query": query, "matches": matches, "truncated": len(matches) >= max_results}

    async def _tool_create_directory(self, path: str) -> dict[str, Any]:
        target = self.path(path)
        existed = target.is_dir()
        target.mkdir(parents=True, exist_ok=True)
        return {"path": self._relative(target), "created": not existed}

    async def _tool_delete_file(self, path: str) -> dict[str, Any]:
        target = self.path(path)
        if not target.is_file():
            raise ToolFailed(f"{path!r} is not a file")
        target.unlink()
        return {"path": self._relative(target), "deleted": True}

    async def _tool_move_file(self, source: str, destination: str) -> dict[str, Any]:
        origin, target = self.path(source), self.path(destination)
        if not origin.exists():
            raise ToolFailed(f"{source!r} does not exist")
        if target.exists():
            raise ToolFailed(f"{destination!r} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(origin, target)
        return {"source": self._relative(origin), "destination": self._relative(target)}

    async def _tool_execute_command(
        self,
        command: str,
        cwd: str = ".",
        timeout: float | None = None,  # noqa: ASYNC109 - the tool schema names it
    ) -> dict[str, Any]:
        directory = self.path(cwd)
        limit = min(timeout or self._command_timeout, self._command_timeout)
        process = await asyncio.create_subprocess_shell(
            command,
            cwd=directory,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(limit):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ToolFailed(f"command timed out after {limit:g}s") from None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return {
            "exit_code": process.returncode,
            "stdout": stdout[-MAX_OUTPUT_BYTES:].decode(errors="replace"),
            "stderr": stderr[-MAX_OUTPUT_BYTES:].decode(errors="replace"),
        }

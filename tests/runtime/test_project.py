"""A project's rules and agents (runtime.project), read through the IDE at a
session's first turn and after a change, on a real store with a scripted model."""

from __future__ import annotations

from typing import Any

from runtime.agent_files import ProjectLimits, merge
from runtime.agents import BUILT_IN
from runtime.commands import ClientOptions, FileChanged, SwitchAgent, ToolResult, UserMessage
from runtime.events import AgentSwitched, ErrorEvent, ToolCallEvent, TurnDone
from runtime.llm import TextChunk
from runtime.project import MAX_RULES_CHARS, ProjectFiles, discover, kind
from runtime.rules import ApprovalRules
from runtime.store import Store
from tests.runtime.test_conversation import ScriptedLlm, call, make, until

VIEWING = ClientOptions(workspace_view=True)


def codelab_listing(*paths: str) -> dict[str, Any]:
    """The CodeLab IDE's answer to a recursive list_files with include_hidden."""
    items = [
        {"name": p.rsplit("/", 1)[-1], "path": p.rstrip("/"), "type": "directory"}
        if p.endswith("/")
        else {"name": p.rsplit("/", 1)[-1], "path": p, "type": "file"}
        for p in paths
    ]
    return {"success": True, "path": ".", "items": items, "total_count": len(items)}


def test_the_project_files_are_found_in_the_listing_in_prompt_order() -> None:
    listing = codelab_listing(
        ".codelab/",
        ".codelab/agents.yaml",
        ".codelab/rules/",
        ".codelab/rules/b.md",
        ".codelab/rules/a.md",
        ".codelab/rules/logo.png",
        ".roorules",
        ".clinerules/",
        ".clinerules/style.txt",
        ".clinerules/.DS_Store",
        "src/AGENTS.md",
        "AGENTS.md",
        "README.md",
    )
    assert discover(listing) == [
        "AGENTS.md",
        ".codelab/rules/a.md",
        ".codelab/rules/b.md",
        ".clinerules/style.txt",
        ".roorules",
        ".codelab/agents.yaml",
    ]
    ours = {"path": ".", "files": ["AGENTS.md", ".clinerules", "docs/"], "truncated": False}
    assert discover(ours) == ["AGENTS.md", ".clinerules"]
    assert kind("./AGENTS.md") == "rules"
    assert kind("docs/AGENTS.md") is None


def test_rules_are_bounded_and_the_prompt_says_what_was_cut() -> None:
    files = ProjectFiles()
    files.read("AGENTS.md", "a" * (MAX_RULES_CHARS - 100))
    files.read(".clinerules", "b" * 500)
    files.read(".roorules", "c")
    assert files.compose() is None
    rules = files.guidance.rules
    assert [origin for origin, _ in rules] == ["AGENTS.md", ".clinerules"]
    assert sum(len(text) for _, text in rules) == MAX_RULES_CHARS
    assert files.guidance.omitted == (
        "(cut to 16,000 characters: 400 characters of .clinerules; 1 characters of "
        ".roorules not shown)"
    )


async def answer_reads(conversation: Any, outbox: Any, files: dict[str, str | None]) -> None:
    """Answer the runtime's read_file calls of the project files ``files`` names."""
    offered = [e for e in await until_calls(outbox, len(files)) if isinstance(e, ToolCallEvent)]
    assert sorted(e.arguments["path"] for e in offered) == sorted(files)
    for event in offered:
        assert event.tool_name == "read_file"
        assert not event.requires_approval
        content = files[event.arguments["path"]]
        answer = (
            ToolResult(event.call_id, error="File not found")
            if content is None
            else ToolResult(event.call_id, result={"content": content})
        )
        await conversation.handle(answer, client=VIEWING)


async def until_calls(outbox: Any, count: int) -> list[Any]:
    events: list[Any] = []
    while sum(isinstance(e, ToolCallEvent) for e in events) < count:
        events += await until(outbox, ToolCallEvent)
    return events


async def start(store: Store, llm: ScriptedLlm, files: dict[str, str | None], **kw: Any) -> Any:
    conversation, outbox, session = await make(store, llm, **kw)
    await conversation.handle(UserMessage("hello"), client=VIEWING)
    (listing,) = await until(outbox, ToolCallEvent)
    assert isinstance(listing, ToolCallEvent)
    assert listing.tool_name == "list_files"
    result = codelab_listing("src/", "src/app.py", *files)
    await conversation.handle(ToolResult(listing.call_id, result=result), client=VIEWING)
    await answer_reads(conversation, outbox, files)
    return conversation, outbox, session


async def test_the_projects_rules_reach_every_prompt_with_their_origin(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")], [TextChunk("c")])
    rules = {"AGENTS.md": "Use tabs, never spaces.", ".codelab/rules/tests.md": "Run pytest -q."}
    conversation, outbox, session = await start(store, llm, rules, agent="debug")
    await until(outbox, TurnDone)
    system = llm.seen[0][0].content
    assert "# Project rules" in system
    assert "## AGENTS.md\nUse tabs, never spaces." in system
    assert "## .codelab/rules/tests.md\nRun pytest -q." in system
    assert system.index("## AGENTS.md") < system.index("# Environment")
    assert all(m.role != "tool" for m in session.messages), "the reads are not in the history"

    await conversation.handle(UserMessage("again"), client=VIEWING)
    events = await until(outbox, TurnDone)
    assert not any(isinstance(e, ToolCallEvent) for e in events), "read once per session"
    assert llm.seen[1][0].content == system

    # The IDE saw AGENTS.md change: the next turn reads it again first.
    await conversation.handle(FileChanged("AGENTS.md", 1.0))
    await conversation.handle(UserMessage("third"), client=VIEWING)
    await answer_reads(conversation, outbox, {"AGENTS.md": "Use spaces, four of them."})
    await until(outbox, TurnDone)
    assert "## AGENTS.md\nUse spaces, four of them." in llm.seen[2][0].content
    assert "Use tabs" not in llm.seen[2][0].content
    assert "Run pytest -q." in llm.seen[2][0].content


SQL_AGENT = """
agents:
  - name: sql
    description: Writes SQL migrations.
    prompt: You are the SQL engineer.
    tools: [read, edit]
    writable: ["*.sql"]
"""


async def test_a_projects_agent_writes_only_what_its_globs_allow(store: Store) -> None:
    llm = ScriptedLlm(
        [TextChunk("a")],
        [
            call("write_file", 0, path="a.py", content="x = 1\n"),
            call("write_file", 1, path="a.sql", content="select 1;\n"),
        ],
    )
    files = {".codelab/agents.yaml": SQL_AGENT}
    conversation, outbox, session = await start(store, llm, files, agent="ask")
    await until(outbox, TurnDone)
    assert session.project.agents["sql"].origin == "project"
    assert "- sql: Writes SQL migrations." in llm.seen[0][0].content, "the others know it"

    # The user's rules allow every write; a project's agent is asked all the same.
    await store.rules.set("alice", ApprovalRules.from_json({"allow": ["write_file"]}))
    await conversation.handle(SwitchAgent("sql", "write the migration"), client=VIEWING)
    *_, read = await until(outbox, ToolCallEvent)
    assert isinstance(read, ToolCallEvent)
    assert (read.tool_name, read.arguments) == ("read_file", {"path": "a.sql"})
    await conversation.handle(ToolResult(read.call_id, error="File not found"), client=VIEWING)
    (write,) = await until(outbox, ToolCallEvent)
    assert isinstance(write, ToolCallEvent)
    assert (write.tool_name, write.arguments["path"]) == ("write_file", "a.sql")
    assert write.requires_approval
    assert "calls are always asked" in write.reason
    refusal = next(m for m in session.messages if m.role == "tool")
    assert "the sql agent may only write *.sql, not 'a.py'" in refusal.content
    assert "You are the SQL engineer." in llm.seen[1][0].content


async def test_a_bad_agents_file_is_reported_and_the_built_ins_go_on(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("answered")])
    files = {".codelab/agents.yaml": "agents:\n  - name: ops\n    tools: [read, fly]\n"}
    _, outbox, session = await start(store, llm, files, agent="ask")
    events = await until(outbox, TurnDone)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [e.code for e in errors] == ["invalid_project_agents"]
    assert errors[0].message.startswith(".codelab/agents.yaml: agents[0] (ops).tools[1]: ")
    assert list(session.project.agents) == ["orchestrator", "coder", "architect", "debug", "ask"]
    assert len(llm.seen) == 1, "the turn went on with the built-in agent"


async def test_a_project_may_not_grant_commands_the_operator_withholds(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("answered")])
    yaml = "agents:\n  - {name: ops, description: d, prompt: p, tools: [read, command]}\n"
    files = {".codelab/agents.yaml": yaml}
    limits = ProjectLimits(frozenset({"read", "edit"}))
    _, outbox, session = await start(store, llm, files, agent="ask", project_limits=limits)
    events = await until(outbox, TurnDone)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert "the operator lets a project's agents have only edit, read, not command" in error.message
    assert "ops" not in session.project.agents


async def test_a_session_on_an_agent_that_is_gone_goes_back_to_the_orchestrator(
    store: Store,
) -> None:
    llm = ScriptedLlm([TextChunk('{"agent": "ask"}')], [TextChunk("answered")])
    conversation, outbox, session = await make(store, llm, agent="sql")
    await conversation.handle(UserMessage("hello"), client=VIEWING)
    (listing,) = await until(outbox, ToolCallEvent)
    assert isinstance(listing, ToolCallEvent)
    result = codelab_listing("README.md")
    await conversation.handle(ToolResult(listing.call_id, result=result), client=VIEWING)
    events = await until(outbox, TurnDone)
    switches = [e for e in events if isinstance(e, AgentSwitched)]
    assert (switches[0].from_agent, switches[0].to_agent) == ("sql", "orchestrator")
    assert switches[-1].to_agent == "ask", "and the request is routed"
    assert session.agent == "ask"


async def test_switch_mode_takes_a_projects_agent_and_refuses_an_unknown_one(
    store: Store,
) -> None:
    llm = ScriptedLlm(
        [TextChunk("a")],
        [call("switch_mode", 0, agent="ghost", reason="x")],
        [call("switch_mode", 0, agent="sql", reason="write the migration")],
        [TextChunk("done")],
    )
    files = {".codelab/agents.yaml": SQL_AGENT}
    conversation, outbox, session = await start(store, llm, files, agent="coder")
    await until(outbox, TurnDone)
    await conversation.handle(UserMessage("go"), client=VIEWING)
    events = await until(outbox, TurnDone)
    refusal = session.messages[-4]
    assert refusal.role == "tool"
    assert "unknown agent 'ghost'; one of orchestrator, coder, architect, debug, ask, sql" in (
        refusal.content
    )
    switched = [e for e in events if isinstance(e, AgentSwitched)]
    assert [(e.from_agent, e.to_agent) for e in switched] == [("coder", "sql")], "it narrows"
    assert "You are the SQL engineer." in llm.seen[-1][0].content


async def test_an_operator_agent_calls_its_own_model_group(store: Store) -> None:
    roster = merge(
        BUILT_IN,
        "agents:\n  - {name: sql, description: d, prompt: p, model: big}\n"
        "  - {name: ask, model: small}\n",
        "ops.yaml",
    )
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, _ = await make(store, llm, agent="sql", agents=roster)
    await conversation.handle(UserMessage("one"))
    await until(outbox, TurnDone)
    await conversation.handle(SwitchAgent("ask", "two"))
    await until(outbox, TurnDone)
    assert llm.models_seen == ["big", "small"]

"""The search index: chunks, ranking, a session's index on each database.

The embedder here is the offline model's function (what llmproxy's ``Embed``
answers with on the offline model), called in process; the whole path
through the gateway, llmproxy and a restart is tests/integration/test_search.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from llmproxy.offline import embed_text
from runtime.codeindex import (
    CHUNK_LINES,
    CHUNK_OVERLAP,
    SearchSettings,
    SessionIndex,
    chunk_lines,
    normalize_path,
    pack,
    rank,
    unpack,
)
from runtime.index_store import IndexStats, StoredChunk
from runtime.state import CallState, PendingCall
from runtime.store import Store

AUTH = (
    "import hashlib\n\ndef hash_password(password, salt):\n"
    "    return hashlib.pbkdf2_hmac(password, salt)\n"
)
DB = "class Database:\n    def connect(self, url):\n        self.engine = create_engine(url)\n"
UI = "def render_button(label, color):\n    return Button(label, color=color)\n"


class OfflineEmbedder:
    """The offline model's embeddings, counting the texts asked for."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return [embed_text(text) for text in texts]


def read(path: str, content: str, **arguments: object) -> tuple[PendingCall, dict[str, object]]:
    call = PendingCall("c1", "read_file", {"path": path, **arguments}, CallState.AWAITING_RESULT)
    return call, {"result": {"path": path, "content": content}}


def test_chunks_overlap_and_cover_every_line() -> None:
    content = "".join(f"line {n}\n" for n in range(1, 101))

    chunks = chunk_lines(content)

    step = CHUNK_LINES - CHUNK_OVERLAP
    assert [c.start_line for c in chunks] == list(range(1, 101 - CHUNK_OVERLAP, step))
    assert chunks[0].end_line == CHUNK_LINES
    assert chunks[-1].end_line == 100
    assert chunks[0].text.splitlines()[0] == "line 1"
    assert chunk_lines("") == []
    assert chunk_lines("\n\n  \n") == []
    assert [(c.start_line, c.end_line) for c in chunk_lines("one line")] == [(1, 1)]


def test_paths_are_keyed_alike() -> None:
    assert normalize_path("./src//a.py") == "src/a.py"
    assert normalize_path("/src/a.py") == "src/a.py"


def test_rank_puts_the_nearest_first_and_skips_overlaps() -> None:
    def stored(path: str, start: int, end: int, text: str) -> StoredChunk:
        return StoredChunk(path, start, end, text, pack(embed_text(text)))

    chunks = [
        stored("ui.py", 1, 2, UI),
        stored("auth.py", 1, 4, AUTH),
        stored("auth.py", 3, 4, AUTH),  # overlaps the better one of its file
        stored("db.py", 1, 3, DB),
    ]

    matches = rank(embed_text("where are passwords hashed"), chunks, 2)

    assert len(matches) == 2
    assert (matches[0].path, matches[0].start_line) == ("auth.py", 1)
    assert matches[1].path != "auth.py"
    assert matches[0].score > matches[1].score
    assert unpack(pack([3.0, 4.0])) == pytest.approx((0.6, 0.8))


async def test_a_session_finds_what_it_read_and_only_that(store: Store) -> None:
    await store.create_session("s1", "alice", "ask")
    await store.create_session("s2", "alice", "ask")
    embedder = OfflineEmbedder()
    index = SessionIndex("s1", store.index, embedder, "offline")
    for path, content in (("src/auth.py", AUTH), ("./src/db.py", DB), ("ui.py", UI)):
        index.observe(*read(path, content), "completed")
    index.observe(*read("big.py", AUTH, start_line=1), "completed")  # a range: not indexed

    found = await index.search({"query": "where are passwords hashed"})

    matches = found["result"]["matches"]
    assert matches[0]["path"] == "src/auth.py"
    assert matches[0]["start_line"] == 1
    assert "hash_password" in matches[0]["text"]
    assert {m["path"] for m in matches} == {"src/auth.py", "src/db.py", "ui.py"}
    assert found["result"]["searched_files"] == 3
    under = await index.search({"query": "database connection", "path": "src/", "max_results": 1})
    assert [m["path"] for m in under["result"]["matches"]] == ["src/db.py"]
    other = SessionIndex("s2", store.index, embedder, "offline")
    nothing = await other.search({"query": "where are passwords hashed"})
    assert nothing["result"]["matches"] == []
    assert "read the files first" in nothing["result"]["note"]
    await index.close()


async def test_changes_are_followed(store: Store) -> None:
    await store.create_session("s1", "alice", "coder")
    index = SessionIndex("s1", store.index, OfflineEmbedder(), "offline")
    index.observe(*read("auth.py", AUTH), "completed")
    index.observe(*read("db.py", DB), "completed")
    write = PendingCall(
        "c2", "write_file", {"path": "ui.py", "content": UI}, CallState.AWAITING_RESULT
    )
    index.observe(write, {"result": {}}, "completed")
    index.observe(write, {"error": "denied"}, "failed")
    index.forget("auth.py")  # the IDE's file_changed
    move = PendingCall(
        "c3", "move_file", {"source": "db.py", "destination": "d.py"}, CallState.AWAITING_RESULT
    )
    index.observe(move, {"result": {}}, "completed")

    found = await index.search({"query": "render a button"})

    assert [m["path"] for m in found["result"]["matches"]] == ["ui.py"]
    assert await store.index.stats("s1") == IndexStats(files=1, chunks=1)
    await index.close()


async def test_limits_forget_the_oldest_files(store: Store) -> None:
    await store.create_session("s1", "alice", "ask")
    limits = SearchSettings(max_files=2, max_file_bytes=len(AUTH), max_chunks=10)
    index = SessionIndex("s1", store.index, OfflineEmbedder(), "offline", limits)
    index.observe(*read("auth.py", AUTH), "completed")
    index.observe(*read("db.py", DB), "completed")
    index.observe(*read("ui.py", UI), "completed")
    index.observe(*read("huge.py", AUTH + "# more\n"), "completed")  # over max_file_bytes

    found = await index.search({"query": "hash passwords", "max_results": 5})

    assert {m["path"] for m in found["result"]["matches"]} == {"db.py", "ui.py"}
    await index.close()


async def test_deleting_the_session_deletes_its_index(store: Store) -> None:
    await store.create_session("s1", "alice", "ask")
    index = SessionIndex("s1", store.index, OfflineEmbedder(), "offline")
    index.observe(*read("auth.py", AUTH), "completed")
    await index.settled()
    assert (await store.index.stats("s1")).files == 1

    assert await store.delete_session("s1")

    assert (await store.index.stats("s1")).files == 0
    await index.close()


async def test_without_an_embedder_the_tool_says_so(store: Store) -> None:
    index = SessionIndex("s1", store.index, None, "offline")
    index.observe(*read("auth.py", AUTH), "completed")

    found = await index.search({"query": "passwords"})

    assert "no embedding model" in found["error"]


async def test_a_file_read_again_unchanged_is_not_embedded_again(store: Store) -> None:
    await store.create_session("s1", "alice", "coder")
    embedder = OfflineEmbedder()
    index = SessionIndex("s1", store.index, embedder, "offline")
    index.observe(*read("auth.py", AUTH), "completed")
    await index.settled()
    first = await store.index.file_chunks("s1", "auth.py")
    embedded = len(embedder.texts)
    assert embedded > 0

    index.observe(*read("./auth.py", AUTH), "completed")  # the same file, the same text
    await index.settled()
    assert len(embedder.texts) == embedded
    assert await store.index.file_chunks("s1", "auth.py") == first

    changed = AUTH + "# salted\n"
    index.observe(*read("auth.py", changed), "completed")
    await index.settled()
    assert len(embedder.texts) == embedded + 1
    assert "# salted" in (await store.index.file_chunks("s1", "auth.py"))[0][3]

    other_model = SessionIndex("s1", store.index, embedder, "other-model")
    other_model.observe(*read("auth.py", changed), "completed")  # held, by another model
    await other_model.settled()
    assert len(embedder.texts) == embedded + 2
    assert {row[0] for row in await store.index.file_chunks("s1", "auth.py")} == {"other-model"}

    index.forget("auth.py")
    index.observe(*read("auth.py", changed), "completed")  # forgotten, then read: indexed
    await index.settled()
    assert len(embedder.texts) == embedded + 3
    found = await index.search({"query": "salted password hash"})
    assert [m["path"] for m in found["result"]["matches"]] == ["auth.py"]
    await index.close()
    await other_model.close()

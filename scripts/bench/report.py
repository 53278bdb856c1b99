# ruff: noqa: RUF001 - the multiplication sign is meant
"""The "## Mesh" section of docs/BENCHMARKS.md, from one run's results.

Regenerating replaces the section's tables and keeps whatever follows a
``### Findings`` heading inside it (written by a person, from the numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOPS = (
    ("source hop", "source", "llmproxy"),
    ("middle hop", "relay", "runtime"),
    ("edge", "edge", "gateway"),
    ("client (driver)", "client", "client"),
)

INTRO = """\
The whole mesh (gateway → runtime → llmproxy with the offline model, plus
auth) against a bare relay that does only the transport: a gRPC token
source → a gRPC bidi relay → a `websockets` edge (one gRPC stream per
WebSocket, one JSON text frame per gRPC message, `compression=None`) → the
client. Same client code, same scenarios, same run (`scripts/bench/`).

The relay is *tight*: the limit the mesh would reach if its hops cost
nothing beyond the transport, so "% of the relay" is overhead. Every relay
process and the client run on uvloop, as the mesh's services do
(`mesh.process`), and the relay merges exactly where the mesh merges: the
source writes through `mesh.outbox.Outbox` as llmproxy does (tokens made
while a write is in flight go out as one message), the middle hop merges
what queued while its previous write was in flight as the runtime's
`Converse` pump does, and the edge sends one frame per message as the
gateway does. `--loose-relay` runs the relay as first shipped (standard
asyncio loop, one message per token at every hop) for comparison with
older runs.

How each number is taken:

- **tokens/s**: tokens delivered to the clients over the measured phase
  (every session connected and warmed up first; then all measured turns
  start at once and run back to back; the phase ends at the last `is_final`).
- **turns/s**: measured turns over the same wall time.
- **TTFT**: client sends `user_message` → first token frame arrives. With a
  paced source it includes one `token_delay`: the source (and the offline
  model) emits token *i* `(i + 1) × token_delay` after the turn starts, on
  an absolute schedule as a provider does, so a late wake-up delays one
  token rather than every token after it.
- **paced: share of the pace delivered**: per turn, the tokens' nominal
  span (`(n − 1) × token_delay`) over the span they arrived in, at most 1,
  times the share of the turn's tokens that arrived; averaged over the
  turns asked (a failed turn counts 0). A stream that falls behind its
  source scores below 1; one that only starts late does not (that is
  TTFT). The paced scenario's **tokens/s** divides by the whole wall time,
  TTFT of 50 simultaneous turn starts included, so it reads below the pace
  asked even when every stream keeps it.
- **added latency**: each token carries its source's `CLOCK_MONOTONIC`
  emission time (the relay's source, and the offline model with
  `stamp_tokens: true`, stamp every word as `word@<ns>`); client arrival
  minus that stamp. A frame carrying several merged tokens counts one
  arrival per token. Also shown: the **inter-arrival excess** (gap between
  consecutive tokens of a turn minus the source's pacing).
- **TTFT scenario**: 50 sessions each think 0–2 s (uniform, seeded) before
  every turn, so turns arrive spread out as from people, not all at once;
  the TTFT target is read there. The unpaced scenarios start every turn at
  the same instant, so their TTFT is mostly queueing behind the others.
- **CPU per token**: utime+stime from `/proc/<pid>/stat` of each process
  around the measured phase, over tokens delivered (the client: its own
  `getrusage`). Mesh pids are devstack's children.
- **RSS per idle connection**: VmRSS (statm) of the edge / gateway before
  and 2 s after the clients (several processes) have opened every
  connection, over the number opened. Mesh connections are authenticated
  (dev token) and wait for `session_info`, so their `Converse` stream is open.
- mesh sessions: the first message of each session is a warm-up
  `switch_agent` to `ask` with content (skips the orchestrator's routing
  call), not measured; measured turns are `user_message` to `ask`.
- mesh environment: the edge's abuse limits are lifted for one user on one
  address; the environment it was given: `{limits}` (llmproxy
  processes: `CODELAB_LLMPROXY_REPLICAS`, the runtime balancing over them);
  everything else is the default (SQLite unless stated, approvals
  untouched, INFO logging to files, `GATEWAY__ATTACH_ON_FIRST_FRAME=true`).
"""


def _ms(d: dict[str, Any] | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "—"
    v = d[key]
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ratio(a: Any, b: Any) -> str:
    try:
        return f"{a / b:.2f}×"
    except (TypeError, ZeroDivisionError):
        return "—"


def scenario_table(entry: dict[str, Any]) -> list[str]:
    columns = [("bare relay", entry.get("baseline"))]
    columns.append(("mesh (SQLite)", entry.get("mesh")))
    if entry.get("mesh_postgres"):
        columns.append(("mesh (PostgreSQL)", entry["mesh_postgres"]))
    entry.get("baseline") or {}
    head = "| | " + " | ".join(c for c, _ in columns) + " | mesh / relay |"
    lines = [head, "|---" * (len(columns) + 2) + "|"]

    def row(label: str, get: Any, ratio: bool = True) -> None:
        values = [get(r) if r else None for _, r in columns]
        cells = [v if isinstance(v, str) else _fmt(v) for v in values]
        r = _ratio(values[1], values[0]) if ratio and not isinstance(values[0], str) else ""
        if ratio and len(values) > 2 and not isinstance(values[0], str):
            r += f" (PG {_ratio(values[2], values[0])})"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r} |")

    first = next(r for _, r in columns if r)
    lines.insert(
        0,
        f"{first['sessions']} session(s) × {first['turns_per_session']} measured "
        f"turns × {first['tokens_per_turn']} tokens, token_delay "
        f"{first['token_delay_s']} s"
        + (f", think 0–{2 * first['think_s']:g} s before each turn" if first.get("think_s") else "")
        + "\n",
    )
    row("tokens delivered", lambda r: r["tokens"], False)
    row("wall (s)", lambda r: r["wall_s"], False)
    row("**tokens/s**", lambda r: r["tokens_per_s"])
    row("turns/s", lambda r: r["turns_per_s"])
    if first.get("delivery") is not None:
        row("paced: share of the pace delivered", lambda r: r.get("delivery"))
    row("TTFT p50 (ms)", lambda r: r["ttft_ms"]["p50"])
    row("TTFT p99 (ms)", lambda r: r["ttft_ms"]["p99"])
    row(
        "added latency p50 / p99 (ms, stamped)",
        lambda r: (
            f"{_ms(r.get('added_latency_ms'), 'p50')} / {_ms(r.get('added_latency_ms'), 'p99')}"
            if r.get("added_latency_ms")
            else "n/a"
        ),
        False,
    )
    row(
        "inter-arrival excess p50 / p99 (ms)",
        lambda r: f"{_ms(r['gap_excess_ms'], 'p50')} / {_ms(r['gap_excess_ms'], 'p99')}",
        False,
    )
    for label, relay_name, mesh_name in HOPS:

        def cpu(r: dict[str, Any], a: str = relay_name, b: str = mesh_name) -> Any:
            per = r["cpu_us_per_token"]
            return per.get(a, per.get(b))

        row(f"CPU µs/token: {label}", cpu)
    row("CPU µs/token: auth", lambda r: r["cpu_us_per_token"].get("auth"), False)
    row(
        "CPU µs/token: all services",
        lambda r: round(sum(v for k, v in r["cpu_us_per_token"].items() if k != "client"), 1),
    )
    row(
        "other processes' CPU meanwhile (cores)",
        lambda r: r.get("other_processes_cores", "?"),
        False,
    )
    errors = sum(r["error_count"] for _, r in columns if r)
    if errors:
        lines.append(
            f"\nsession errors: {errors} — "
            + "; ".join(e for _, r in columns if r for e in r["errors"][:2])
        )
    return lines


def idle_table(report: dict[str, Any]) -> list[str]:
    base, real = report.get("idle_baseline"), report.get("idle_mesh")
    lines = ["| | bare relay edge | mesh gateway |", "|---|---|---|"]

    def row(label: str, get: Any) -> None:
        cells = [_fmt(get(r)) if r else "—" for r in (base, real)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("connections attempted", lambda r: r["target"])
    row("connections open", lambda r: r["opened"])
    row("failed", lambda r: r["failed"])
    row("time to open all (s)", lambda r: r["open_s"])
    row("edge RSS before (MB)", lambda r: round(r["rss_before_kb"]["edge"] / 1024, 1))
    row("edge RSS after (MB)", lambda r: round(r["rss_after_kb"]["edge"] / 1024, 1))
    row("**edge RSS per connection (KB)**", lambda r: r["rss_per_connection_kb"]["edge"])
    row(
        "next hop RSS per connection (KB) (relay / runtime)",
        lambda r: r["rss_per_connection_kb"].get(
            "relay", r["rss_per_connection_kb"].get("runtime")
        ),
    )
    row("client RSS per connection (KB)", lambda r: r["client_rss_per_connection_kb"])
    for r in (base, real):
        if r and r["errors"]:
            lines.append(f"\nerrors: {'; '.join(r['errors'])}")
    return lines


def targets(report: dict[str, Any]) -> list[str]:
    sc = report["scenarios"]
    wide, paced = sc["wide"], sc["paced"]
    lines = ["| target | measured | |", "|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    r = wide.get("mesh", {}).get("tokens_per_s"), wide.get("baseline", {}).get("tokens_per_s")
    if all(r):
        share = r[0] / r[1]
        lines.append(
            f"| 50 sessions: throughput ≥ 50% of the bare relay | {share:.0%} "
            f"({r[0]:,.0f} vs {r[1]:,.0f} tok/s) | {verdict(share >= 0.5)} |"
        )
    m = paced.get("mesh")
    base = (paced.get("baseline") or {}).get("added_latency_ms") or {}
    if m and m.get("added_latency_ms") and base.get("p99") is not None:
        p50, p99 = m["added_latency_ms"]["p50"], m["added_latency_ms"]["p99"]
        share = m.get("delivery", 0.0)
        ok = share >= 0.99 and p99 <= base["p99"] + 2
        lines.append(
            f"| 50 × 100 tok/s: ≥ 99% delivered, added latency p99 ≤ the relay's + 2 ms | "
            f"{share:.1%} delivered, p99 {p99:.1f} ms, p50 {p50:.1f} ms "
            f"(relay p99 {_ms(base, 'p99')} ms) | {verdict(ok)} |"
        )
    m = sc.get("ttft", {}).get("mesh")
    if m:
        p50, p99 = m["ttft_ms"]["p50"], m["ttft_ms"]["p99"]
        base = sc["ttft"].get("baseline") or {}
        lines.append(
            f"| 50 sessions, zero-delay model: TTFT p50 ≤ 15 ms | {p50:.1f} ms "
            f"(relay {_ms(base.get('ttft_ms'), 'p50')} ms) | {verdict(p50 <= 15)} |"
        )
        lines.append(
            f"| … TTFT p99 ≤ 50 ms | {p99:.1f} ms (relay {_ms(base.get('ttft_ms'), 'p99')} ms)"
            f" | {verdict(p99 <= 50)} |"
        )
    i = report.get("idle_mesh")
    if i:
        per = i["rss_per_connection_kb"]["edge"]
        ok = i["opened"] >= 10_000 and per is not None and per <= 20
        lines.append(
            f"| 10,000 idle connections at ≤ 20 KB each | {i['opened']:,} open, "
            f"{per} KB each (gateway) | {verdict(ok)} |"
        )
    return lines


def profile(report: dict[str, Any]) -> list[str]:
    prof = report.get("profile")
    if not isinstance(prof, dict) or not prof:
        return [f"no profile ({prof})"] if prof else []
    run = report.get("profiled_run", {})
    lines = [
        f"py-spy (`record --nonblocking --rate 200`, Python frames only) on gateway, "
        f"runtime and llmproxy during one extra turn of "
        f"{report.get('profiled_scenario', '50 sessions, unpaced')} "
        f"({run.get('tokens', '?')} tokens, {run.get('tokens_per_s', '?')} tok/s while "
        "profiled). Samples with the event loop blocked in epoll are left out; shares "
        "are of the remaining (busy) samples. Self time of a Python frame includes the "
        "C/Cython it calls (protobuf, grpc's Cython layer, json); `threading.py:Thread.run` "
        "as a leaf is a native thread (gRPC's poller, aiosqlite's worker).",
        "",
    ]
    for name, p in prof.items():
        lines.append(
            f"**{name}** ({p['samples']} samples, {p['epoll_wait_share']}% in epoll) "
            "— self: " + ", ".join(f"`{f}` {pc}%" for f, pc in p["self_top"][:6])
        )
        lines.append("")
        lines.append(
            "  inclusive, our code: "
            + ", ".join(f"`{f}` {pc}%" for f, pc in p["inclusive_top_ours"][:6])
        )
        lines.append("")
    return lines


def section(report: dict[str, Any], json_path: str) -> str:
    m = report["machine"]
    limits = ", ".join(f"{k}={v}" for k, v in report["mesh_env"].items())
    out = [
        "## Mesh",
        "",
        INTRO.replace("{limits}", limits),
        f"- command: `{report['command']} --write` (whole run {report['run_s']:.0f} s)",
        f"- date: {report['date']}",
        f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['memory_gib']} GiB, "
        f"Python {m['python']}, Linux {m['kernel']}; every process shares the same cores",
        f"- raw results: `{json_path}`",
        "",
        "### Targets",
        "",
    ]
    out += targets(report)
    for _name, entry in report["scenarios"].items():
        out += ["", f"### {entry['title']}", ""]
        out += scenario_table(entry)
    out += ["", "### Idle connections", "", *idle_table(report)]
    out += ["", "### Profile", "", *profile(report)]
    return "\n".join(out) + "\n"


def write_section(report: dict[str, Any], path: Path, json_path: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("\n## Mesh")
    findings = ""
    if start >= 0:
        end = text.find("\n## ", start + 1)
        old = text[start:] if end < 0 else text[start:end]
        if "\n### Findings" in old:
            findings = old[old.index("\n### Findings") :].rstrip("\n") + "\n"
        text = text[:start] + ("" if end < 0 else text[end:])
    new = section(report, json_path) + findings
    path.write_text(text.rstrip("\n") + "\n\n" + new)

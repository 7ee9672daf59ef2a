"""`llamafs top`: the dashboard's view in a terminal, over 9P, refreshed
until `q` (or Ctrl-C).  Drawn with rich, to fit the terminal (80x24 at least)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import tty

import trio
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from styxfs import client

from .status import Watcher

STATE_STYLE = {"up": "bold green", "draining": "bold yellow", "loading": "bold yellow"}


def _fmt(value, digits: int = 0) -> str:
    if value is None or value == "":
        return "-"
    return f"{float(value):.{digits}f}"


def header(d: dict) -> Table:
    """One line: the name (cut short if it must be) and the figures, which always show."""
    ttft = d["ttft_recent"] * 1000 if d["ttft_recent"] is not None else None
    figures = (f"nodes {d['healthy']}/{d['nodes']}  sess {d['sessions']}"
               + (f"/{d['maxsessions']}" if d["maxsessions"] else "")
               + f"  {_fmt(d['tokens_per_second'], 1)} tok/s  ttft {_fmt(ttft)}ms  prompts {d['requests_total']}")
    name = Text.assemble((d["name"] or "llamafs", "bold"), f" {d['strategy'] or d['role']}")
    grid = Table.grid(expand=True)
    grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis", min_width=8)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_row(name, " " + figures)
    return grid


# The node table's columns; every one but ERROR is as wide as its widest cell,
# ERROR takes what is left of the line, a node's error on its own row.
NODE_COLUMNS = [("NODE", "left"), ("STATE", "left"), ("SESS", "right"), ("FLIGHT", "right"), ("QUEUE", "right"),
                ("TOK/S", "right"), ("CHECK", "right"), ("FAIL", "right"), ("RST", "right")]


def node_table(nodes: list[dict], by_model: bool = False) -> Table:
    """by_model: several models, each node's named beside its id."""
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    for name, justify in NODE_COLUMNS[:1] + [("MODEL", "left")] * by_model + NODE_COLUMNS[1:]:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
    table.add_column("ERROR", ratio=1, no_wrap=True, overflow="ellipsis", min_width=12)
    for n in nodes:
        style = STATE_STYLE.get(n["state"], "bold red")
        table.add_row(n["id"], *[n.get("model", "")] * by_model, Text(n["state"], style=style),
                      str(n["sessions"]), str(n["inflight"]),
                      str(n["queue"]), _fmt(n["tokens_per_second"], 1), f"{_fmt(n['latency_ms'], 1)}ms",
                      str(n["failures"]), str(n.get("restarts", 0)), Text(n["error"], style="red"))
    return table


def model_table(models: list[dict]) -> Table:
    """A line a model: its nodes up and in all, context, chat or raw, sessions."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in [("MODEL", "left"), ("STATE", "left"), ("NODES", "right"), ("CTX", "right"),
                          ("MODE", "left"), ("SESS", "right")]:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
    for m in models:
        table.add_row(m["name"], Text(m["state"], style=STATE_STYLE.get(m["state"], "bold red")), str(m.get("nodes", "")),
                      str(m.get("context", "")), str(m.get("mode", "")), str(m.get("sessions", "")))
    return table


def render(status: dict, height: int = 24) -> Group:
    models = status.get("models") or []
    several = len(models) > 1
    shown_nodes = sorted(status["nodes"], key=lambda n: n.get("model", "")) if several else status["nodes"]
    head, nodes = header(status["deployment"]), node_table(shown_nodes, several)
    parts = [head] + [model_table(models)] * several + [Text(""), nodes]
    sessions = status.get("sessions")
    room = height - len(status["nodes"]) - 7 - (len(models) + 1) * several  # headers, gaps, the key line
    if sessions and room > 1:
        table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
        for name, justify in [("#", "right"), ("OWNER", "left"), ("STATE", "left"), ("WHY", "left"),
                              ("NODE", "left"), ("IN", "right"), ("OUT", "right"), ("TOK/S", "right"),
                              ("TTFT", "right"), ("IDLE", "right")]:
            table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
        shown = sessions[-room:] if len(sessions) <= room else sessions[-(room - 1):]
        for s in shown:
            table.add_row(str(s["number"]), s["owner"], s["state"], str(s.get("reason", "")), str(s.get("node", "")),
                          str(s.get("tokens_in", "")), str(s.get("tokens_out", "")), _fmt(s.get("tokens_per_sec"), 1),
                          _fmt(s.get("ttft"), 3), f"{_fmt(s.get('idle'))}s")
        parts += [Text(""), table]
        if len(shown) < len(sessions):
            parts.append(Text(f"... and {len(sessions) - len(shown)} more sessions", style="dim"))
    parts.append(Text("q quits", style="dim"))
    return Group(*parts)


@contextlib.contextmanager
def keys_unbuffered():
    """stdin a key at a time (no echo), if it is a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_key(timeout: float) -> str | None:
    """A key pressed within timeout seconds, or None."""
    fd = sys.stdin.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 1)
    return data.decode(errors="replace") if data else "\x04"  # end of input


async def run_top(c: client.Client, interval: float = 1.0, console: Console | None = None) -> None:
    from rich.live import Live

    console = console or Console()
    watcher = Watcher(c)
    with keys_unbuffered(), Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            try:
                view = render(await watcher.status(), console.size.height)
            except (client.ServerError, trio.TooSlowError) as e:
                view = Text(f"cannot read the tree: {e}", style="bold red")
            live.update(view, refresh=True)
            key = await trio.to_thread.run_sync(wait_key, interval, abandon_on_cancel=True)
            if key in ("q", "Q", "\x04"):
                return

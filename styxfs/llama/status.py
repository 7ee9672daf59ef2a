"""What a node or a deployment is doing, read over 9P from its files (ctl,
metrics, sessions, nodes/ID/health): the one view that `llamafs top`, the
dashboard and `/api/status` show.  Rates (tokens/s, the time to first
token of recent replies) are the change since the previous reading, as
Prometheus's rate() would give them."""

from __future__ import annotations

import time

import trio

from styxfs import client, metrics

from .reply import parse_status


def parse_keyed(text: str) -> dict[str, str]:
    """`key value` lines; the first of a repeated key wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, value)
    return out


def parse_sessions(text: str) -> list[dict]:
    """The root `sessions` file: `N owner` and a status line, a line."""
    out = []
    for line in text.splitlines():
        words = line.split(None, 2)
        if len(words) < 3 or not words[0].isdigit():
            continue
        state, fields = parse_status(words[2])
        out.append({"number": int(words[0]), "owner": words[1], "state": state,
                    **{key: _number_or_text(value) for key, value in fields.items()}})
    return out


def _number_or_text(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


class Watcher:
    """Readings of one node or coordinator through a client: a 9P
    connection (`llamafs top`) or a LocalClient (HTTP, beside the server)."""

    def __init__(self, c: client.Client, timeout: float = 5.0):
        self.client = c
        self.timeout = timeout
        self.ttft_seen = (0.0, 0.0)  # the TTFT histogram's sum and count at the last reading
        self.history: list[dict] = []  # (time, tokens/s, sessions, ttft), the last minutes, for the charts
        self.keep = 300
        self.last: dict | None = None  # the last reading: what rates are taken against

    async def read(self, path: str) -> str:
        return (await self.client.read_file(path)).decode(errors="replace")

    async def status(self, max_age: float = 0.0) -> dict:
        """A reading; one taken within max_age seconds is given again
        (several pages polling at once cost one reading)."""
        if self.last is not None and time.time() - self.last["time"] <= max_age:
            return self.last
        with trio.fail_after(self.timeout):
            ctl = parse_keyed(await self.read("ctl"))
            samples = metrics.parse(await self.read("metrics"))
            sessions = parse_sessions(await self.read("sessions"))
            models = await self._models()
            role = ctl.get("role", "node")
            if role == "coordinator":
                nodes = [await self._node(d.name, samples, len(models) > 1) for d in await self.client.listdir("nodes")]
            else:
                nodes = [{**self._itself(ctl, samples), "model": ",".join(m["name"] for m in models)}]
        now = time.time()
        prefix = "llamafs_coordinator" if role == "coordinator" else "llamafs"
        ttft_sum = metrics.value(samples, f"{prefix}_time_to_first_token_seconds_sum")
        ttft_count = metrics.value(samples, f"{prefix}_time_to_first_token_seconds_count")
        before = self.last
        elapsed = now - before["time"] if before else 0.0
        counted = {n["id"]: n["tokens_out_total"] for n in before["nodes"]} if before else {}
        for node in nodes:
            then = counted.get(node["id"])
            node["tokens_per_second"] = (round(max(0.0, node["tokens_out_total"] - then) / elapsed, 1)
                                         if then is not None and elapsed > 0 else 0.0)
        ttft = None
        seen_sum, seen_count = self.ttft_seen
        if before and ttft_count > seen_count:
            ttft = (ttft_sum - seen_sum) / (ttft_count - seen_count)
        self.ttft_seen = (ttft_sum, ttft_count)
        total_rate = round(sum(n["tokens_per_second"] for n in nodes), 1)
        self.history.append({"time": round(now, 3), "tokens_per_second": total_rate,
                             "sessions": len(sessions), "ttft": None if ttft is None else round(ttft, 4)})
        del self.history[: -self.keep]
        self.last = {
            "time": now,
            "deployment": {
                "role": role, "name": ctl.get("name", ""), "version": ctl.get("version", ""),
                "state": ctl.get("state", ""), "strategy": ctl.get("strategy", ""),
                "model": ctl.get("model", ""),
                "nodes": len(nodes), "healthy": sum(1 for n in nodes if n["state"] in ("up", "draining")),
                "sessions": int(ctl.get("sessions", len(sessions)) or 0),
                "maxsessions": int(ctl.get("maxsessions", 0) or 0),
                "tokens_per_second": total_rate,
                "ttft_recent": None if ttft is None else round(ttft, 4),
                "requests_total": int(metrics.value(samples, f"{prefix}_requests_total")),
            },
            "nodes": nodes,
            "models": models,
            "sessions": sessions,
            "history": list(self.history),
        }
        return self.last

    async def _models(self) -> list[dict]:
        """models/NAME/status of each model: name, state, nodes (up/total), context, mode, sessions."""
        try:
            names = [d.name for d in await self.client.listdir("models")]
        except client.ServerError:
            return []  # a tree of before models/
        out = []
        for name in names:
            try:
                state, fields = parse_status(await self.read(f"models/{name}/status"))
            except client.ServerError:
                continue  # gone between the listing and the read
            out.append({"name": name, "state": state, **{k: _number_or_text(v) for k, v in fields.items()}})
        return out

    async def _node(self, node_id: str, samples: dict, by_model: bool = False) -> dict:
        try:
            health = parse_keyed(await self.read(f"nodes/{node_id}/health"))
        except client.Error as e:  # removed between the listing and the read
            health = {"state": "gone", "error": str(e)}
        labels = {"node": node_id, **({"model": health.get("model", "")} if by_model else {})}  # control.py's
        return {
            "id": node_id, "address": health.get("address", ""), "state": health.get("state", "?"),
            "model": health.get("model", ""),
            "error": health.get("error", ""), "weight": _float(health.get("weight", "1")),
            "latency_ms": round(_float(health.get("latency", "0")) * 1000, 2),
            "failures": int(_float(health.get("failures", "0"))),
            "restarts": int(_float(health.get("restarts", "0"))),
            "sessions": int(_float(health.get("sessions", "0"))),
            "inflight": int(_float(health.get("inflight", "0"))),
            "queue": int(metrics.value(samples, "llamafs_queue_length", labels)),
            "generating": int(metrics.value(samples, "llamafs_generating", labels)),
            "slots": int(metrics.value(samples, "llamafs_slots", labels)),
            "tokens_out_total": metrics.value(samples, "llamafs_tokens_out_total", labels),
        }

    def _itself(self, ctl: dict, samples: dict) -> dict:
        """A node alone: one row, itself."""
        loaded = ctl.get("state") == "loaded"
        return {
            "id": ctl.get("name") or "node", "address": "", "state": "up" if loaded else ctl.get("state", "?"),
            "error": ctl.get("error", ""), "weight": 1.0, "latency_ms": 0.0, "failures": 0, "restarts": 0,
            "sessions": int(metrics.value(samples, "llamafs_sessions")),
            "inflight": int(metrics.value(samples, "llamafs_generating")),
            "queue": int(metrics.value(samples, "llamafs_queue_length")),
            "generating": int(metrics.value(samples, "llamafs_generating")),
            "slots": int(metrics.value(samples, "llamafs_slots")),
            "tokens_out_total": metrics.value(samples, "llamafs_tokens_out_total"),
        }


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0

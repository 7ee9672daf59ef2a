"""Prometheus text exposition (version 0.0.4, what Prometheus scrapes and
`promtool check metrics` checks), histograms, the merging of several
processes' figures into one text, and a 9P server's own figures."""

from __future__ import annotations

import re

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def family_of(name: str, kind: str) -> str:
    """The metric family a sample belongs to: a histogram's _bucket, _sum
    and _count samples are one family."""
    if kind == "histogram":
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
    return name


def exposition(samples: list[tuple[str, str, str, dict[str, str], float]]) -> str:
    """(name, type, help, labels, value) rows as Prometheus text, one
    HELP/TYPE header per family, before its first sample."""
    out, seen = [], set()
    for name, kind, help_text, labels, value in samples:
        family = family_of(name, kind)
        if family not in seen:
            seen.add(family)
            out.append(f"# HELP {family} {help_text}")
            out.append(f"# TYPE {family} {kind}")
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def _escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


class Histogram:
    """Counts of observations at or below each bound, as Prometheus keeps them."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * len(self.bounds)  # not cumulative: one bucket each
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def samples(self, name: str, help_text: str, labels: dict[str, str] | None = None) -> list:
        labels = labels or {}
        rows, below = [], 0
        for bound, n in zip(self.bounds, self.counts):
            below += n
            rows.append((f"{name}_bucket", "histogram", help_text, {**labels, "le": str(float(bound))}, below))
        rows.append((f"{name}_bucket", "histogram", help_text, {**labels, "le": "+Inf"}, self.count))
        rows.append((f"{name}_sum", "histogram", help_text, labels, self.sum))
        rows.append((f"{name}_count", "histogram", help_text, labels, self.count))
        return rows


# A sample line: its name, its labels with their braces (or None), its value.
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text as {(name, frozenset of label pairs): value}; the
    one reader of an exposition (comments and bad lines are skipped)."""
    out = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            out[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
        except ValueError:
            continue
    return out


def value(samples: dict[tuple[str, frozenset], float], name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of parse()'s result, 0 if absent."""
    return samples.get((name, frozenset((labels or {}).items())), 0.0)


def merge(own: str, labelled: list[tuple[dict[str, str], str]]) -> str:
    """One exposition of our own text and other processes' texts (a
    coordinator's nodes'), each of those with labels added to every sample
    (node="ID").  A family that several texts have comes once, with one
    header and all its samples together, as the format requires."""
    headers: dict[str, dict[str, str]] = {}  # family -> {"HELP": line, "TYPE": line}, the first text's
    samples: dict[str, list[str]] = {}  # family -> its samples, from every text
    for labels, text in [({}, own)] + labelled:
        extra = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        family = None
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    headers.setdefault(family, {}).setdefault(parts[1], line)
                    samples.setdefault(family, [])
                continue
            match = SAMPLE.match(line)
            if match is None:
                continue
            name, label_text, value = match.groups()
            if extra:
                inner = label_text[1:-1] if label_text else ""
                label_text = "{" + extra + ("," + inner if inner else "") + "}"
            samples.setdefault(family or name, []).append(f"{name}{label_text or ''} {value}")
    out = []
    for family, lines in samples.items():
        out += [headers.get(family, {}).get(k) for k in ("HELP", "TYPE")] + lines
    return "".join(line + "\n" for line in out if line)


def count_tasks() -> int:
    """Tasks alive in this trio run (for leak checks)."""
    import trio

    def walk(task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def server_samples(server, prefix: str) -> list:
    """The 9P server's own figures, named `prefix_…`: what a leak would show in."""
    return [
        (f"{prefix}_connections", "gauge", "9P connections open", {}, len(server.connections)),
        (f"{prefix}_fids", "gauge", "fids held on all connections", {}, server.fid_count()),
        (f"{prefix}_outstanding_requests", "gauge", "9P requests being answered", {}, server.outstanding_count()),
        (f"{prefix}_tasks", "gauge", "trio tasks alive", {}, count_tasks()),
    ]

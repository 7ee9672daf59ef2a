"""Stop strings: a reply's text is cut where one begins, and a tail that
could be the start of one is held back until the next token says."""

from __future__ import annotations


def apply_stops(stops: tuple[str, ...], text: bytes) -> tuple[bytes, bytes, bool]:
    """text (what was held back, then the new token's) cut at the first stop
    string.  Returns the text to emit now, the text to hold back, and
    whether a stop string was met."""
    wanted = [s.encode() for s in stops if s]
    cut = min((i for i in (text.find(s) for s in wanted) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], b"", True
    hold = 0
    for s in wanted:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold], text[len(text) - hold :], False

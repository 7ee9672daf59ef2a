"""What the Inferno-side tests share (test_limbo.py, test_limbo_auth.py,
test_isolation_deploy.py): the Limbo driver of the module's ADTs, its
compiled form (the `dis` fixture), running it in emu, isolates.  Like
inferno.py, nothing here runs without an emu."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator import isolation

from .inferno import find_emu, inferno, quote

REPO = Path(__file__).resolve().parent.parent
GREEDY = "defaults temperature 0\ndefaults maxtokens 24"  # root ctl lines

DRIVER = REPO / "limbo" / "testdriver.b"  # built with the module, as mk builds it


def tools() -> tuple[str, str, Path]:
    """(emu, ROOT, the bin directory with limbo and mk)."""
    emu, root = find_emu()
    return emu, root, Path(emu).parent


def host(p: Path | str) -> str:
    return quote("#U*" + str(Path(p).resolve()))


@pytest.fixture(scope="session")
def dis() -> tuple[Path, Path]:
    """(llamacpp.dis, testdriver.dis), compiled from limbo/ by isolation.build_dis
    (warnings are errors there)."""
    emu, root, _ = tools()
    built = isolation.build_dis(root, emu, (*isolation.PROGRAMS, DRIVER.stem), src=DRIVER.parent)
    return built / "llamacpp.dis", built / "testdriver.dis"


# /n/llama need not exist in an Inferno tree: a memfs before /n makes it.
MNTPT = "memfs -b /n; mkdir -p /n/llama"


async def drive(dis, commands: list[str], setup: str = "", timeout: float = 25) -> dict | list:
    """Run the driver; [(command, output)] in order (result.status must be "")."""
    module, driver = dis
    script = f"load std\n{MNTPT}\n{setup}\n{host(driver)} {host(module)} " + " ".join(quote(c) for c in commands)
    result = await inferno(script, timeout)
    assert result.status == "", (result.stdout, result.stderr)
    assert result.stdout.endswith("=== end\n"), result.stdout
    sections = ("\n" + result.stdout).split("\n=== ")[1:-1]
    out = []
    for section in sections:
        command, _, text = section.partition("\n")
        out.append((command, text + "\n"))
    assert [c for c, _ in out] == commands
    return [text for _, text in out]


@pytest.fixture
async def isolates():
    made = []

    def make(node_id="node-0"):
        iso = isolation.Isolate(node_id)
        made.append(iso)
        return iso

    yield make
    for iso in made:
        iso.stop()

"""A smoke test on the real default model (Gemma 3 270M): no exact text."""

from __future__ import annotations

from styxfs import client, wire


async def test_default_model_answers(start_node):
    address, node = await start_node(model=None, ctx=1024)
    async with client.connect(address) as c:
        model = (await c.read_file("model")).decode()
        assert "architecture gemma3" in model and "gemma-3-270m" in model
        async with await c.open("new/ctl", wire.ORDWR) as ctl:
            number = (await ctl.read()).decode().strip()
            await ctl.fid.write(b"maxtokens 16\ntemperature 0", 0)
        await c.write_file(f"{number}/data", "The capital of France is")
        reply = await c.read_file("reply")
        status = (await c.read_file(f"{number}/status")).decode()
    assert reply.strip(), reply
    assert status.startswith("done") and "tokens_out=" in status
    assert 0 < int(status.split("tokens_out=")[1].split()[0]) <= 16

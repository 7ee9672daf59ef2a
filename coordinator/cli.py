"""The `llamafs` command."""

from __future__ import annotations

import contextlib
import os
import sys

import click
import trio

import styxfs
from styxfs import client, dial, wire
from styxfs.auth import read_secret, secret_authenticator
from styxfs.llama.models import NAMED
from styxfs.llama.reply import parse_status
from styxfs.llama.status import Watcher
from styxfs.llama.cli import check_listen, http_url, mount_help, serve, setup_logging, stop_on_signals

from .config import STRATEGIES, ConfigError, DeploymentConfig, generate
from .deploy import DeploymentManager


@click.group()
@click.version_option(styxfs.__version__, prog_name="llamafs")
@click.option("-v", "--verbose", count=True, help="log more (-vv: every message)")
def main(verbose: int) -> None:
    """llama.cpp served as a 9P file tree."""
    setup_logging(verbose)


main.add_command(serve)


def auth_option(fn):
    return click.option("--auth-secret-file", type=click.Path(dir_okay=False, exists=True),
                        help="authenticate with this file's secret")(fn)


@contextlib.asynccontextmanager
async def connect(addr: str, auth_secret_file: str | None):
    """A client of addr; nothing listening there is a clear error that says what to start."""
    authenticate = secret_authenticator(read_secret(auth_secret_file)) if auth_secret_file else None
    try:
        stream = await dial.connect(dial.parse(addr))
    except OSError as e:
        raise click.ClickException(
            f"nothing answers at {addr} ({e.strerror or e}): start a node there with `llamafs serve` "
            f"(or bin/serve), or a deployment with `llamafs deploy start`, or give --addr") from None
    await stream.aclose()
    async with client.connect(addr, authenticate=authenticate) as c:
        yield c


@main.command()
@click.option("--addr", default=dial.DEFAULT_ADDRESS, show_default=True, help="node or coordinator")
@click.option("--temperature", type=click.FloatRange(0, 100), help="sampling temperature")
@click.option("--maxtokens", type=click.IntRange(1), help="tokens to generate at most")
@click.option("--seed", type=int, help="sampling seed")
@click.option("--system", help="a system prompt (chat)")
@click.option("--raw", is_flag=True, help="raw completion, even where the model has a chat template")
@auth_option
@click.argument("prompt", nargs=-1)
def ask(addr, temperature, maxtokens, seed, system, raw, auth_secret_file, prompt):
    """Stream one reply to PROMPT (or to standard input); say on standard
    error when the reply was cut short."""
    text = " ".join(prompt) if prompt else sys.stdin.read()
    if not text.strip():
        raise click.UsageError("no prompt: give one as arguments or on standard input")
    settings = [f"{k} {v}" for k, v in (("temperature", temperature), ("maxtokens", maxtokens), ("seed", seed))
                if v is not None] + (["mode raw"] if raw else [])

    async def run():
        async with connect(addr, auth_secret_file) as c:
            async with await c.open("clone", wire.ORDWR) as ctl:  # a session of our own, closed after
                number = (await ctl.read()).decode().strip()
                if settings:
                    await ctl.fid.write("\n".join(settings).encode(), 0)
                if system:
                    await c.write_file(f"{number}/system", system)
                await stream_reply(c, f"{number}/data", text)
                status = (await c.read_file(f"{number}/status")).decode()
                await ctl.fid.write(b"close", 0)
        reason = parse_status(status)[1].get("reason")
        if reason in ("length", "context"):
            why = "maxtokens" if reason == "length" else "the context is full"
            click.echo(f"llamafs: the reply was cut short ({why}: reason={reason})", err=True)

    try:
        trio.run(run)
    except client.Error as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        sys.exit(130)


async def stream_reply(c: client.Client, path: str, prompt: str) -> None:
    async with await c.open(path, wire.ORDWR) as f:
        await f.write(prompt)
        async for piece in f.stream():
            sys.stdout.buffer.write(piece)
            sys.stdout.buffer.flush()
    sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


@main.group()
def deploy() -> None:
    """Deployments: many nodes behind one coordinator."""


@deploy.command("generate-config")
@click.option("--model", help="a .gguf file, or a name: smollm2 (the default), gemma3-270m")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="the JSON file to write")
@click.option("--strategy", default="round-robin", show_default=True, type=click.Choice(STRATEGIES))
@click.option("--base-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def generate_config(model, nodes, output, strategy, base_port):
    """Write a config with NODES nodes on localhost, ports base-port+i."""
    if base_port + nodes - 1 > 65535:
        raise click.BadParameter(f"ports {base_port}..{base_port + nodes - 1} go past 65535", param_hint="--base-port")
    if model and model not in NAMED:
        model = os.path.abspath(model)
    config = generate(model, nodes, strategy, base_port)
    config.save(output)
    click.echo(f"wrote {output}: {nodes} nodes on ports {base_port}-{base_port + nodes - 1}, {strategy}")


@deploy.command("start")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--logs", type=click.Path(file_okay=False), help="a directory for the nodes' logs")
def deploy_start(config_path, logs):
    """Start the nodes a config names and serve their union."""
    try:
        config = DeploymentConfig.load(config_path)
        check_listen(config.network.listen)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if logs:
        os.makedirs(logs, exist_ok=True)
    manager = DeploymentManager(config, node_log_dir=logs)
    manager.on("node-down", lambda node: click.echo(f"llamafs: node {node} is down", err=True))
    manager.on("node-up", lambda node: click.echo(f"llamafs: node {node} is up", err=True))

    async def run():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signals, nursery.cancel_scope)
            click.echo(f"llamafs: starting {len(config.nodes)} nodes...", err=True)
            await manager.deploy(nursery)
            click.echo(status_table(manager.status()))
            if config.network.http:
                click.echo(f"llamafs: dashboard on {http_url(dial.parse(config.network.http), manager.http_port)}",
                           err=True)
            click.echo(f"llamafs: coordinator serving on {manager.address}\nmount it with:\n"
                       + mount_help(dial.parse(manager.address)), err=True)
        # Cancelled by a signal: drain and stop what we started.
        await manager.shutdown()

    try:
        trio.run(run)
    except (OSError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass
    click.echo("llamafs: deployment stopped", err=True)


def status_table(status: dict) -> str:
    rows = [("NODE", "ADDRESS", "STATE", "WEIGHT", "SESSIONS", "INFLIGHT", "LATENCY", "FAILURES")]
    for n in status["nodes"]:
        state = n["state"] + (" (draining)" if n.get("draining") else "")
        rows.append((n["id"], n["address"], state, f"{float(n['weight']):g}", str(n["sessions"]),
                     str(n.get("inflight", "")), f"{float(n['latency']) * 1000:.1f}ms", str(n["failures"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    head = f"{status['name']}: {status['strategy']}, {status['sessions']} sessions"
    return head + "\n" + "\n".join(lines)


@main.command()
@click.option("--addr", default=dial.DEFAULT_ADDRESS, show_default=True, help="the coordinator")
@auth_option
def status(addr, auth_secret_file):
    """The nodes of a coordinator: health, load and sessions."""

    async def run():
        async with connect(addr, auth_secret_file) as c:
            reading = await Watcher(c).status()  # what `top` and the dashboard show
        d = reading["deployment"]
        if d["role"] != "coordinator":
            raise click.ClickException(f"{addr} is a node, not a coordinator")
        return {"name": d["name"], "strategy": d["strategy"], "sessions": d["sessions"],
                "nodes": [{**n, "latency": n["latency_ms"] / 1000} for n in reading["nodes"]]}

    try:
        click.echo(status_table(trio.run(run)))
    except (client.Error, trio.TooSlowError) as e:
        raise click.ClickException(str(e) or f"{addr} did not answer in time") from None


@main.command()
@click.option("--addr", default=dial.DEFAULT_ADDRESS, show_default=True, help="node or coordinator")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="seconds between refreshes")
@auth_option
def top(addr, interval, auth_secret_file):
    """A live view of a node or a deployment, until q."""
    from styxfs.llama.top import run_top

    async def run():
        async with connect(addr, auth_secret_file) as c:
            await run_top(c, interval)

    try:
        trio.run(run)
    except client.Error as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass


@main.command("http-token")
@click.option("--auth-secret-file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="the secret the node or deployment was given")
def http_token_command(auth_secret_file):
    """The bearer token HTTP asks for, derived from the secret (for
    Prometheus's credentials_file, and the dashboard's login)."""
    from styxfs.llama.web import http_token

    click.echo(http_token(read_secret(auth_secret_file)))


if __name__ == "__main__":
    main()

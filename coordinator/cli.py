"""The `llamafs` command."""

from __future__ import annotations

import contextlib
import os
import sys

import click
import trio

import styxfs
from styxfs import client, dial, tls, wire
from styxfs.auth import read_secret, secret_authenticator
from styxfs.llama.models import NAMED
from styxfs.llama.reply import parse_status
from styxfs.llama.status import Watcher
from styxfs.llama import ready
from styxfs.llama.cli import check_listen, http_url, mount_help, serve, setup_logging, stop_on_signals

from .config import MODEL_NAME, STRATEGIES, ConfigError, DeploymentConfig, generate
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
    except tls.TLSError as e:  # something answers: it is not trusted, or speaks no TLS
        raise click.ClickException(f"{addr}: {e}") from None
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
@click.option("--grammar", type=click.File("rb"), help="a GBNF grammar the reply follows")
@click.option("--schema", type=click.File("rb"), help="a JSON schema the reply matches")
@click.option("--json", "as_json", is_flag=True, help="the reply is a JSON object")
@auth_option
@click.argument("prompt", nargs=-1)
def ask(addr, temperature, maxtokens, seed, system, raw, grammar, schema, as_json, auth_secret_file, prompt):
    """Stream one reply to PROMPT (or to standard input); say on standard
    error when the reply was cut short."""
    text = " ".join(prompt) if prompt else sys.stdin.read()
    if not text.strip():
        raise click.UsageError("no prompt: give one as arguments or on standard input")
    settings = [f"{k} {v}" for k, v in (("temperature", temperature), ("maxtokens", maxtokens), ("seed", seed))
                if v is not None] + (["mode raw"] if raw else []) + (["json"] if as_json else [])
    if sum(map(bool, (grammar, schema, as_json))) > 1:
        raise click.UsageError("--grammar, --schema and --json: give one of them")
    constraint = ("grammar", grammar.read()) if grammar else ("schema", schema.read()) if schema else None

    async def run():
        async with connect(addr, auth_secret_file) as c:
            async with await c.open("clone", wire.ORDWR) as ctl:  # a session of our own, closed after
                number = (await ctl.read()).decode().strip()
                if settings:
                    await ctl.fid.write("\n".join(settings).encode(), 0)
                if system:
                    await c.write_file(f"{number}/system", system)
                if constraint:  # an invalid one is refused here, at the file's clunk
                    await c.write_file(f"{number}/{constraint[0]}", constraint[1])
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


def generate_args(models: list[str], counts: list[str], resolve=lambda path: path):
    """generate's model and nodes from `--model [NAME=]PATH` and `--nodes
    [NAME=]N`, each given any number of times; resolve makes a path absolute."""
    pairs = [m.split("=", 1) if "=" in m and MODEL_NAME.match(m.split("=", 1)[0]) else [None, m] for m in models]
    named = {name for name, _ in pairs if name is not None}
    if not named:
        if len(pairs) > 1:
            raise ConfigError("--model: give one PATH, or NAME=PATH for each of several models")
        if len(counts) > 1 or any("=" in c for c in counts):
            raise ConfigError("--nodes: give N for one model (NAME=N goes with --model NAME=PATH)")
        return (resolve(pairs[0][1]) if pairs else None), _count("--nodes", counts[0] if counts else "2")
    if len(named) < len(pairs):
        raise ConfigError("--model: a repeated name, or a PATH without NAME= among several models")
    given = dict(c.split("=", 1) if "=" in c else (None, c) for c in counts)
    for name in given:
        if name not in named:
            raise ConfigError(f"--nodes: {name or 'N'}: name a model given by --model NAME=PATH, as NAME=N")
    return ({name: resolve(path) for name, path in pairs},
            {name: _count(f"--nodes {name}", given.get(name, "1")) for name, _ in pairs})


def _count(what: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise ConfigError(f"{what}: {text!r} is not a number of nodes from 1 to 256")
    return int(text)


@deploy.command("generate-config")
@click.option("--model", "models", multiple=True, metavar="[NAME=]PATH",
              help="a .gguf file, or a name: smollm2 (the default), gemma3-270m; NAME=PATH, repeated, for several")
@click.option("--nodes", "counts", multiple=True, metavar="[NAME=]N",
              help="how many nodes (of model NAME)  [default: 2]")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="the JSON file to write")
@click.option("--strategy", default="round-robin", show_default=True, type=click.Choice(STRATEGIES))
@click.option("--base-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def generate_config(models, counts, output, strategy, base_port):
    """Write a config with its nodes on localhost, ports base-port+i:
    `--model PATH --nodes N` for one model, `--model NAME=PATH --nodes NAME=N`
    (each repeated) for several, the first the default."""
    try:
        model, nodes = generate_args(models, counts, resolve=lambda path: path if path in NAMED else os.path.abspath(path))
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    total = nodes if isinstance(nodes, int) else sum(nodes.values())
    if base_port + total - 1 > 65535:
        raise click.BadParameter(f"ports {base_port}..{base_port + total - 1} go past 65535", param_hint="--base-port")
    try:
        config = generate(model, nodes, strategy, base_port)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    config.save(output)
    nodes = total
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
    try:
        manager = DeploymentManager(config, node_log_dir=logs)
    except ConfigError as e:  # network.tls's files
        raise click.ClickException(str(e)) from None
    def said(node: str) -> str:
        return f"node {node} (model {manager.pool.get(node).model_label})"

    manager.on("node-down", lambda node: click.echo(f"llamafs: {said(node)} is down: {manager.pool.get(node).error}",
                                                    err=True))
    manager.on("node-up", lambda node: click.echo(f"llamafs: {said(node)} is up", err=True))

    async def run():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signals, nursery.cancel_scope)
            click.echo(f"llamafs: starting {len(config.nodes)} nodes...", err=True)
            await manager.deploy(nursery)
            click.echo(status_table(manager.status()))
            if config.network.http:
                click.echo(f"llamafs: dashboard on {http_url(dial.parse(config.network.http), manager.http_port)}",
                           err=True)
            ready.announce(manager.address)  # to whoever started us (LLAMAFS_READY_FD), the port chosen
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
    """The nodes, a line each; with several models, a line a model first and the nodes grouped by theirs."""
    models = status.get("models") or []
    several = len(models) > 1
    rows = [("NODE", *["MODEL"] * several, "ADDRESS", "STATE", "WEIGHT", "SESSIONS", "INFLIGHT", "LATENCY",
             "FAILURES", "RESTARTS", "ERROR")]
    for n in sorted(status["nodes"], key=lambda n: n.get("model", "")) if several else status["nodes"]:
        state = n["state"] + (" (draining)" if n.get("draining") else "")
        rows.append((n["id"], *[n.get("model", "")] * several, n["address"], state, f"{float(n['weight']):g}",
                     str(n["sessions"]), str(n.get("inflight", "")), f"{float(n['latency']) * 1000:.1f}ms",
                     str(n["failures"]), str(n.get("restarts", 0)), n.get("error") or ""))
    head = f"{status['name']}: {status['strategy']}, {status['sessions']} sessions"
    if several:
        head += "".join(f"\nmodel {m['name']}: {m['state']}, nodes {m.get('nodes', '?')}, context "
                        f"{m.get('context', '?')}, {m.get('mode', '?')}, {m.get('sessions', 0)} sessions" for m in models)
    return head + "\n" + columns(rows)


def columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


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
        return {"name": d["name"], "strategy": d["strategy"], "sessions": d["sessions"], "models": reading["models"],
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

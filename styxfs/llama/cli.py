"""The node's command: `python -m styxfs.llama` and `llamafs serve` are this
one command, with one definition of its options."""

from __future__ import annotations

import getpass
import logging
import signal
import sys

import click
import trio

import styxfs
from styxfs import dial, tls

from . import ready
from .node import Node, NodeOptions
from .settings import DEFAULT_LISTEN, HTTP_PORT, NODE


def setup_logging(verbose: int) -> None:
    logging.basicConfig(level=logging.WARNING - 10 * verbose, format="llamafs: %(name)s: %(message)s")


def mount_help(address: dial.Address) -> str:
    host, port = address.host if address.host not in ("*", "") else "127.0.0.1", address.port
    return (
        f"  Inferno:   mount -A tcp!{host}!{port} /n/llama\n"
        f"  plan9port: 9p -a tcp!{host}!{port} ls;  9pfuse tcp!{host}!{port} /mnt/llama\n"
        f"  Linux:     mount -t 9p -o trans=tcp,port={port},version=9p2000 {host} /mnt/llama\n"
        f"  Python:    llamafs ask --addr 'tcp!{host}!{port}' 'Once upon a time'\n"
    )


def check_listen(listen: str, option: str = "--listen", default_port: int = dial.DEFAULT_PORT) -> dial.Address:
    try:
        address = dial.parse(listen, default_port)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None
    if option == "--http" and address.network != "tcp":
        raise click.BadParameter(f"HTTP listens on tcp only: {listen}", param_hint=option)
    return address


def check_tls(address: dial.Address, cert: str | None, key: str | None, client_ca: str | None) -> None:
    """TLS options go with a tls! address, and the other way round."""
    if address.network == "tls" and not (cert and key):
        raise click.UsageError(f"--listen {address} needs --tls-cert and --tls-key")
    if address.network != "tls" and (cert or key or client_ca):
        raise click.UsageError(f"--tls-cert, --tls-key and --tls-client-ca go with --listen tls!HOST!PORT, "
                               f"not {address}")


def http_url(address: dial.Address, port: int) -> str:
    host = address.host if address.host not in ("*", "", "0.0.0.0") else "127.0.0.1"
    return f"http://{host}:{port}/"


async def stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def int_range(key: str) -> click.IntRange:
    return click.IntRange(NODE[key].low, NODE[key].high)


@click.command()
@click.version_option(styxfs.__version__, prog_name="llamafs")
@click.option("--model", help="a .gguf file, or a name: smollm2 (the default: SmolLM2-135M-Instruct, chat), "
              "gemma3-270m (Gemma 3 270M, a base model)")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True,
              help="dial string; tcp!*!PORT listens on every interface")
@click.option("--models-dir", type=click.Path(file_okay=False), help="where ctl `load` may load from")
@click.option("--ctx", default=NODE["ctx"].default, show_default=True, type=int_range("ctx"),
              help="context per session")
@click.option("--gpu-layers", default=NODE["gpulayers"].default, show_default=True, type=int_range("gpulayers"))
@click.option("--threads", default=NODE["threads"].default, type=int_range("threads"),
              help="CPU threads (0: all cores)")
@click.option("--batch", default=NODE["batch"].default, show_default=True, type=int_range("batch"))
@click.option("--slots", default=NODE["slots"].default, show_default=True, type=int_range("slots"),
              help="sessions decoded together")
@click.option("--max-sessions", default=NODE["maxsessions"].default, show_default=True,
              type=int_range("maxsessions"))
@click.option("--session-timeout", default=NODE["sessiontimeout"].default, show_default=True,
              type=click.FloatRange(NODE["sessiontimeout"].low, NODE["sessiontimeout"].high),
              help="seconds an idle session lives")
@click.option("--max-connections", default=NODE["maxconnections"].default, show_default=True,
              type=int_range("maxconnections"))
@click.option("--owner", default=None, help="who may write the root ctl (default: you; '*': anyone)")
@click.option("--auth-secret-file", type=click.Path(dir_okay=False, exists=True),
              help="require clients to prove they know this file's secret (Tauth)")
@click.option("--chat-template-file", type=click.Path(dir_okay=False, exists=True),
              help="a Jinja chat template to use in place of the model's own")
@click.option("--no-model", is_flag=True, help="start without a model (load one later through ctl)")
@click.option("--prefix-cache", default=NODE["prefixcache"].default, show_default=True,
              type=int_range("prefixcache"), help="tokens of closed sessions' prompts kept for reuse")
@click.option("--share-prefixes", is_flag=True,
              help="reuse cached prompts across users too (by timing, one may learn how another's began)")
@click.option("--http", help="also serve /metrics, /api/status and the dashboard over HTTP here "
              "(a dial string: tcp!127.0.0.1!9640)")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True),
              help="with --listen tls!*!PORT: this node's certificate chain (PEM)")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="the certificate's key (PEM)")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False, exists=True),
              help="mutual TLS: take only clients with a certificate this CA signed")
@click.option("-v", "--verbose", count=True, help="log more (-vv: every message)")
def serve(model, listen, models_dir, ctx, gpu_layers, threads, batch, slots, max_sessions, session_timeout,
          max_connections, owner, auth_secret_file, chat_template_file, no_model, prefix_cache, share_prefixes,
          http, tls_cert, tls_key, tls_client_ca, verbose):
    """Serve one model as a 9P file tree."""
    if verbose:
        setup_logging(verbose)
    address = check_listen(listen)
    http_address = check_listen(http, "--http", HTTP_PORT) if http else None
    check_tls(address, tls_cert, tls_key, tls_client_ca)
    options = NodeOptions(model=model, listen=listen, models_dir=models_dir, ctx=ctx, gpu_layers=gpu_layers,
                          threads=threads, batch=batch, slots=slots, max_sessions=max_sessions,
                          session_timeout=session_timeout, max_connections=max_connections,
                          owner=owner or getpass.getuser(), auth_secret_file=auth_secret_file,
                          chat_template_file=chat_template_file, no_model=no_model, prefix_cache=prefix_cache,
                          share_prefixes=share_prefixes, http=str(http_address) if http else None,
                          tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca)
    bar = click.progressbar(length=100, label="loading model", file=sys.stderr)

    def progress(fraction: float) -> None:
        bar.update(int(fraction * 100) - bar.pos)

    try:
        node = Node(options, load_progress=progress)
    except tls.TLSError as e:
        raise click.ClickException(str(e)) from None

    async def run():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signals, nursery.cancel_scope)
            try:
                await nursery.start(node.run)
            except OSError as e:
                raise click.ClickException(f"cannot listen on {node.binding}: {e.strerror or e}") from None
            bar.render_finish()
            info = node.engine.info
            if info:
                click.echo(f"llamafs: {info.path} ({info.description}, context {info.context})", err=True)
            elif no_model:
                click.echo("llamafs: no model yet: load one with ctl (load PATH)", err=True)
            else:  # a mistyped path at a shell: say so and stop, as llama-server does
                raise click.ClickException(f"model not loaded: {node.root.load_error}")
            shown = dial.served(address, node.listeners)
            click.echo(f"llamafs: serving on {shown}", err=True)
            ready.announce(shown)  # to a deployment that started us, with the port that was chosen
            if not dial.is_loopback(address) and not (auth_secret_file or tls_client_ca):
                click.echo("llamafs: warning: listening beyond loopback, without authentication", err=True)
            if http_address:
                click.echo(f"llamafs: dashboard on {http_url(http_address, node.http_port)}", err=True)
                if not dial.is_loopback(http_address) and not auth_secret_file:
                    click.echo("llamafs: warning: HTTP beyond loopback, without authentication", err=True)
            if address.network == "tcp":
                click.echo("mount it with:\n" + mount_help(shown), err=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    click.echo("llamafs: stopped", err=True)

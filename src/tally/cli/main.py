"""The `tally` command."""

from __future__ import annotations

import typer

from tally.cli import (
    adapters,
    ask,
    attribution,
    audit,
    chain,
    datanets,
    factory,
    identity,
    ledger,
    models,
    rewards,
    worker,
)
from tally.cli.common import console, fail, load_cli_settings
from tally.config import Settings, apply_server_process_settings

app = typer.Typer(help="Tally: attribution-native AI.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(ledger.app, name="ledger")
app.command("audit")(audit.audit_cmd)
app.add_typer(chain.app, name="chain")
app.add_typer(models.app, name="models")
app.add_typer(adapters.app, name="adapters")
app.command("ask")(ask.ask)
app.command("train")(factory.train_cmd)
app.command("eval")(factory.eval_cmd)
app.command("leaderboard")(factory.leaderboard_cmd)
app.command("publish")(factory.publish_cmd)
app.command("worker")(worker.worker_cmd)
app.add_typer(factory.pipeline_app, name="pipeline")
app.add_typer(identity.accounts, name="accounts")
app.add_typer(identity.keys, name="keys")
app.add_typer(datanets.app, name="datanet")
app.add_typer(rewards.app, name="rewards")
app.add_typer(attribution.app, name="attribution")
app.command("contribute", help="Upload rows to a datanet (same as `tally datanet contribute`).")(
    datanets.contribute_cmd
)
db = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all database migrations (the server and CLI also do this on start)."""
    from tally.store import open_store

    store = open_store(load_cli_settings())
    console.print(f"database at {store.url} is up to date")
    store.dispose()


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default: settings server.host)"),
    port: int = typer.Option(None, help="port (default: settings server.port)"),
    log_format: str = typer.Option(None, help="text | json (default: settings log.format)"),
    log_level: str = typer.Option(None, help="DEBUG | INFO | WARNING | ERROR (default: settings log.level)"),
    replicas: int = typer.Option(
        None,
        min=1,
        help="engine replicas behind one ingress, on Ray Serve (default: server.replicas; 1: no Ray)",
    ),
    ray_address: str = typer.Option(None, help="with replicas: join this Ray cluster (default: a local one)"),
    replica_threads: int = typer.Option(
        None,
        min=1,
        help="torch threads per replica (default: server.replica_threads; with one process: engine.threads)",
    ),
) -> None:
    """Start the API server: one process, or with --replicas N an ingress over N engine replicas (docs/scaling.md)."""
    import uvicorn

    from tally.api import create_app
    from tally.config.logs import configure_logging

    settings = load_cli_settings()
    overrides = {"replicas": replicas, "ray_address": ray_address, "replica_threads": replica_threads}
    given = {key: value for key, value in overrides.items() if value is not None}
    if given:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=given)})
    if replica_threads is not None and settings.server.replicas == 1:  # the one process is the one replica
        settings = settings.model_copy(
            update={"engine": settings.engine.model_copy(update={"threads": replica_threads})}
        )
    for warning in apply_server_process_settings(settings.server):
        console.print(f"[yellow]{warning}; memory use or speed may differ from the documented figures")
    fmt, level = log_format or settings.log.format, (log_level or settings.log.level).upper()
    if fmt not in ("text", "json"):
        raise fail(f"--log-format {fmt!r} is not one of text, json")
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise fail(f"--log-level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    configure_logging(level, fmt)  # type: ignore[arg-type]
    settings = settings.model_copy(update={"log": settings.log.model_copy(update={"level": level, "format": fmt})})
    bind_host = host or settings.server.host
    bind_port = port or settings.server.port
    console.print(f"Tally starting on http://{bind_host}:{bind_port} (data in {settings.data_dir})")
    import signal

    from tally.factory.jobs import WorkerPool

    def stop_after_uvicorn(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # uvicorn re-raises SIGTERM once it has shut down: leave through `finally`

    signal.signal(signal.SIGTERM, stop_after_uvicorn)
    workers = WorkerPool(settings, settings.factory.workers).start()  # jobs run there, never in this process
    try:
        if settings.server.replicas > 1:
            _serve_replicas(settings, bind_host, bind_port)
        else:
            # uvicorn's own access log would repeat the request line without the request id: Tally writes that line
            uvicorn.run(
                create_app(settings, with_engine=True),
                host=bind_host,
                port=bind_port,
                log_level="info",
                access_log=False,
            )
    finally:
        workers.stop()


def _serve_replicas(settings: Settings, host: str, port: int) -> None:
    """Ray is imported only here: the one-process server never needs it."""
    from tally.config.errors import TallyError

    try:
        from tally.api import replicas
    except ImportError as exc:
        raise fail(f"--replicas needs Ray Serve ({exc}): pip install 'tally[replicas]'") from None
    server = settings.server
    console.print(f"{server.replicas} replicas x {server.replica_threads} threads, on Ray Serve")
    try:
        replicas.serve_replicas(settings, host, port)
    except TallyError as exc:
        raise fail(str(exc)) from None


if __name__ == "__main__":
    app()

"""`tally worker`: run fine-tuning jobs and queued pipeline runs from the database, in this process.

Mount in tally.cli.main:
    app.command("worker")(worker.worker_cmd)
"""

from __future__ import annotations

import typer

from tally.cli.common import cli_errors, console, load_cli_settings


def worker_cmd(
    once: bool = typer.Option(False, "--once", help="exit when the queue is empty instead of waiting for jobs"),
    poll: float = typer.Option(1.0, "--poll", min=0.05, help="seconds between looks at an empty queue"),
) -> None:
    """Claim queued jobs and run them, one at a time, until stopped (Ctrl-C or SIGTERM end the job in progress at
    its next step, with a checkpoint, and give it back to the queue). `tally serve` starts `factory.workers` of
    these itself; run this where jobs should run instead (then set `factory.workers = 0` on the server)."""
    from tally.config.logs import configure_logging
    from tally.factory.jobs import run_worker

    settings = load_cli_settings()
    configure_logging(settings.log.level, settings.log.format)
    with cli_errors():
        console.print(f"worker: jobs from {settings.db_url.split('@')[-1]} (data in {settings.data_dir})")
        ran = run_worker(settings, until_idle=once, poll_s=poll)
    console.print(f"worker: stopped after {ran} job(s)")

"""The `photoindex` command line: index, watch, search, persons, check, serve."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from photoindex import IMPORTED
from photoindex.phases import BY_NAME, COMPLETED_TITLE, CONTRACT_KEYS, PHASES
from photoindex.prefect_server import ui_url
from photoindex.settings import Settings, get_settings

if TYPE_CHECKING:
    from api.schemas import UnifiedProgressResponse

app = typer.Typer(
    help="Index a photo folder (CLIP search, faces, persons) with Prefect, and query it.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

PHASE_LABELS = {p.name: p.title for p in PHASES} | {"completed": COMPLETED_TITLE}
TERMINAL = {"completed", "failed", "cancelled"}


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and leave with `code`."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.callback()
def _valid_settings() -> None:
    """Read the settings before any command: a wrong one is one line and exit code 2."""
    from pydantic import ValidationError

    from photoindex.settings import settings_errors

    try:
        get_settings()
    except ValidationError as e:
        lines = settings_errors(e)
        for line in lines[:-1]:
            err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        raise fail(lines[-1]) from None


def _prefect(settings: Settings) -> str:
    return _prefect_server(settings)[0]


def _prefect_server(settings: Settings) -> tuple[str, bool]:
    """The Prefect API URL, and whether a local server had to be started for it."""
    from photoindex.prefect_server import PrefectUnavailable, ensure_prefect_api

    try:
        api_url, server = ensure_prefect_api(settings)
    except PrefectUnavailable as e:
        raise fail(str(e), 1) from e
    return api_url, server is not None


def _fmt_eta(seconds: int | None) -> str:
    if seconds is None:
        return "ETA —"
    m, s = divmod(int(seconds), 60)
    return f"ETA {m}:{s:02d}"


def watch_session(
    session_id: UUID, poll_s: float = 1.0, runner: subprocess.Popen[bytes] | None = None
) -> UnifiedProgressResponse:
    """Show one live bar of the session's unified progress until it ends."""
    return asyncio.run(_watch(session_id, poll_s, runner))


async def _watch(
    session_id: UUID, poll_s: float, runner: subprocess.Popen[bytes] | None
) -> UnifiedProgressResponse:
    """The bar's loop, on one event loop and one Prefect client: a client per poll cost a
    CSRF token (a database write) and every read again, competing with the session it
    shows, whose writes the server then refused now and then (SQLite busy, retried 2 s later)."""
    from api.prefect_reader import default_reader

    reader = default_reader()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("starting", total=100.0, detail="")
        finished_polls = 0
        async with reader.connected():
            while True:
                progress = await reader.unified(session_id)
                overall = progress.overall_progress
                spec = BY_NAME.get(overall.current_phase)
                phase_key = spec.contract if spec is not None else None
                detail = _fmt_eta(overall.eta_seconds)
                if phase_key is not None:
                    p = getattr(progress.phases, phase_key).progress
                    rate = f" {p.images_per_minute:.0f}/min" if p.images_per_minute else ""
                    detail = f"{p.current}/{p.total}{rate}  {detail}"
                bar.update(
                    task,
                    completed=overall.percentage,
                    description=PHASE_LABELS.get(overall.current_phase, overall.current_phase),
                    detail=detail,
                )
                # Our own session process still runs: "failed" from silence is not its last word.
                if progress.overall_status in TERMINAL and (
                    runner is None or runner.poll() is not None
                ):
                    return progress
                # A session run by our own process ends when it does; another one when it stalls.
                if runner is not None and runner.poll() is not None and finished_polls > 0:
                    return progress
                if runner is not None and runner.poll() is not None:
                    finished_polls += 1
                if runner is None and progress.overall_status == "stalled":
                    return progress
                await asyncio.sleep(poll_s)


def _report(progress: UnifiedProgressResponse) -> None:
    table = Table(title=f"session {progress.session_id}: {progress.overall_status}")
    for col in ("phase", "status", "done", "skipped", "images/min", "seconds"):
        table.add_column(col)
    for key in CONTRACT_KEYS:
        phase = getattr(progress.phases, key)
        p = phase.progress
        secs = ""
        if phase.started_at and phase.completed_at:
            secs = f"{(phase.completed_at - phase.started_at).total_seconds():.1f}"
        table.add_row(
            phase.name,
            phase.status,
            f"{p.current}/{p.total}",
            str(getattr(p, "skipped", "")),
            f"{p.images_per_minute:.0f}" if p.images_per_minute else "",
            secs,
        )
    console.print(table)
    for warning in progress.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of photos, searched recursively.")],
    no_faces: Annotated[
        bool, typer.Option("--no-faces", help="Skip face detection and clustering.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start the session and return its id at once.")
    ] = False,
    cold: Annotated[
        bool,
        typer.Option(
            "--cold", help="Run in a new process even when a warm indexer serves this data folder."
        ),
    ] = False,
) -> None:
    """Index FOLDER: CLIP vectors, then faces and persons, with a live progress bar.

    When `photoindex serve` (or `photoindex indexer`) runs for the same data folder, its
    warm indexer runs the session with the models already loaded.
    """
    if not folder.is_dir():
        raise fail(f"folder not found: {folder}")
    settings = get_settings()
    from tasks.lock import LibraryBusy, busy_message, library_holder

    holder = library_holder(settings)
    if holder is not None:
        raise fail(busy_message(holder, settings), 1)
    api_url, started_server = _prefect_server(settings)
    # The user waits from the command's start, but a Prefect server started for it is a
    # one-off, not the session's start-up.
    requested = time.time() if started_server else IMPORTED
    from photoindex.launch import submit_session

    try:
        launched = submit_session(
            folder, faces=not no_faces, settings=settings, cold=cold, requested=requested
        )
    except LibraryBusy as e:
        raise fail(str(e), 1) from e
    session_id, proc = launched.session_id, launched.process
    how = "warm indexer" if launched.route == "warm" else f"{launched.route} start"
    console.print(
        f"session [bold]{session_id}[/bold] ({how}) — Prefect UI: {ui_url(api_url)}"
    )
    if detach:
        return
    try:
        progress = watch_session(session_id, runner=proc)
    except KeyboardInterrupt:
        if proc is not None:
            proc.terminate()
        else:
            from api import controls
            from api.prefect_reader import default_reader

            async def cancel() -> None:
                async with default_reader().connected() as reader:
                    await controls.cancel(reader, session_id)

            asyncio.run(cancel())
        raise fail(
            "interrupted; the session was stopped and can be resumed by re-running", 130
        ) from None
    if proc is not None:
        proc.wait()
    _report(progress)
    _print_catalog_summary(settings)
    if progress.overall_status != "completed":
        failed = [getattr(progress.phases, k) for k in CONTRACT_KEYS]
        why = "; ".join(
            f"{p.name} {p.status}" for p in failed if p.status in {"failed", "cancelled"}
        )
        raise fail(f"session {progress.overall_status}: {why or 'see the Prefect UI'}", 1)


@app.command()
def watch(session_id: Annotated[UUID, typer.Argument(help="The session (flow run) id.")]) -> None:
    """Follow a running session's progress until it ends."""
    settings = get_settings()
    _prefect(settings)
    progress = watch_session(session_id)
    _report(progress)
    if progress.overall_status != "completed":
        raise fail(f"session {progress.overall_status}", 1)


def _print_catalog_summary(settings: Settings) -> None:
    from tasks.catalog import Catalog

    rows = Catalog(settings).query(
        "SELECT (SELECT count(*) FROM images WHERE status = 'indexed') AS images, "
        "(SELECT count(*) FROM images WHERE status <> 'indexed') AS skipped, "
        "(SELECT count(*) FROM faces) AS faces, (SELECT count(*) FROM persons) AS persons"
    )
    r = rows[0]
    console.print(
        f"catalog: {r['images']} images indexed, {r['skipped']} skipped, "
        f"{r['faces']} faces, {r['persons']} persons — {settings.data_dir.resolve()}"
    )


@app.command()
def search(
    text: Annotated[
        str | None, typer.Argument(help="What to look for, e.g. 'a cat on a sofa'.")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many results.")] = 10,
    like: Annotated[
        str | None,
        typer.Option(help="Photos that look like this indexed photo (a path or its sha256)."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(min=-1.0, max=1.0, help="Leave out weaker matches.")
    ] = None,
    after: Annotated[
        datetime | None, typer.Option(help="Captured on or after this date.")
    ] = None,
    before: Annotated[datetime | None, typer.Option(help="Captured before this date.")] = None,
    person: Annotated[
        str | None, typer.Option(help="Only photos of this person (see `photoindex persons`).")
    ] = None,
    sort: Annotated[
        str, typer.Option(help="relevance, newest or oldest (by capture time).")
    ] = "relevance",
) -> None:
    """Find the photos that best match TEXT, or that look like the photo --like."""
    from api.search import (
        LibraryUnavailable,
        PersonNotFound,
        PhotoNotFound,
        SearchQuery,
        TextSearch,
    )
    from tasks.discover import hash_file

    if (text is None) == (like is None):
        raise fail("give a TEXT to search for, or --like PHOTO, not both", 2)
    if sort not in ("relevance", "newest", "oldest"):
        raise fail(f"--sort must be relevance, newest or oldest, not {sort!r}", 2)
    if like is not None and not re.fullmatch(r"[0-9a-f]{64}", like):
        try:
            like = hash_file(like)
        except OSError as e:
            raise fail(f"--like: cannot read {like}: {e.strerror}", 2) from e
    settings = get_settings()
    query = SearchQuery(
        text=text, like=like, k=k, min_score=min_score, after=after, before=before,
        person=person, sort=sort,  # type: ignore[arg-type]
    )  # fmt: skip
    searcher = TextSearch(settings, idle_close_s=0)
    try:
        hits = asyncio.run(searcher.search(query)).hits
    except (LibraryUnavailable, PhotoNotFound, PersonNotFound) as e:
        raise fail(str(e), 1) from e
    finally:
        searcher.close()
    if not hits:
        raise fail("no photo matches: nothing indexed yet, or the filters leave none", 1)
    for hit in hits:
        taken = (hit.taken_at or "")[:10]
        console.print(f"{hit.score:6.3f}  {taken:10}  {hit.path}", highlight=False, soft_wrap=True)


@app.command()
def persons(
    limit: Annotated[int, typer.Option(help="How many persons to list.")] = 50,
    samples: Annotated[int, typer.Option(help="Sample crops per person.")] = 3,
) -> None:
    """List the persons found, largest first, with face counts and sample crops."""
    from tasks.catalog import Catalog

    rows = Catalog(get_settings()).persons(limit=limit, samples=samples)
    if not rows:
        raise fail("no persons yet: index a folder with faces first", 1)
    for r in rows:
        console.print(f"[bold]{r['person_id']}[/bold]  {r['face_count']} faces")
        for crop in r["sample_crops"]:
            console.print(f"    {crop}", highlight=False, soft_wrap=True)


@app.command()
def check(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="First move unreadable catalog parts aside (the next run redoes them)."
        ),
    ] = False,
) -> None:
    """Check the data folder: catalog, face crops and vectors agree, no half-written files."""
    from tasks.integrity import check_integrity
    from tasks.integrity import repair as repair_catalog
    from tasks.lock import busy_message, library_holder
    from tasks.vectors import VectorStoreBusy

    settings = get_settings()
    holder = library_holder(settings)
    if holder is not None:
        raise fail(busy_message(holder, settings) + " Check again when it has finished.", 1)
    if repair:
        for line in repair_catalog(settings):
            console.print(f"repair: {line}", highlight=False, soft_wrap=True)
    try:
        problems = check_integrity(settings, store_wait_s=10.0)
    except VectorStoreBusy as e:
        raise fail(str(e), 1) from e
    if problems:
        for problem in problems:
            err.print(f"[red]problem:[/red] {problem}", highlight=False, soft_wrap=True)
        raise fail(f"{len(problems)} problem(s) in {settings.data_dir.resolve()}", 1)
    console.print(f"ok: catalog, crops and vectors agree in {settings.data_dir.resolve()}")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [default: PHOTOINDEX_API_HOST, 127.0.0.1]")
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the API and progress page.")] = 8000,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--no-warm",
            help="Keep a warm indexer with the models loaded, so sessions start in about "
            "a second (costs about 1 GB of memory while models are loaded).",
        ),
    ] = True,
) -> None:
    """Serve the REST API and progress page, with the local Prefect server."""
    import uvicorn

    from api.security import is_loopback

    settings = get_settings()
    host = host or settings.api_host
    if not is_loopback(host) and settings.api_token is None:
        raise fail(
            f"--host {host} would let other machines in without a password: set "
            "PHOTOINDEX_API_TOKEN (16 characters or more) first, or bind 127.0.0.1"
        )
    api_url = _prefect(settings)
    console.print(f"photoindex on http://{host}:{port}/ — Prefect UI: {ui_url(api_url)}")
    if not is_loopback(host):
        console.print(
            "[yellow]note:[/yellow] plain HTTP: the token crosses the network readable; "
            "put a TLS proxy in front for anything but a trusted network"
        )
    if warm:
        from photoindex.indexer import start_indexer

        start_indexer(settings)
    from api.app import create_app
    from api.server import server_config

    app_settings = settings.model_copy(update={"prefect_api_url": api_url, "api_host": host})
    uvicorn.Server(server_config(create_app(app_settings), app_settings, host, port)).run()


@app.command()
def gc() -> None:
    """Housekeeping: compact the catalog, delete expired batch results and old flow runs,
    rotate logs (bounded by the PHOTOINDEX_GC_* settings)."""
    from tasks.lock import busy_message, library_holder

    settings = get_settings()
    holder = library_holder(settings)
    if holder is not None:
        raise fail(busy_message(holder, settings) + " Run gc when it has finished.", 1)
    _prefect(settings)
    from tasks.housekeeping import housekeeping

    summary = housekeeping(settings)
    for line in summary.lines():
        console.print(line, highlight=False, soft_wrap=True)
    if summary.skipped:
        raise typer.Exit(1)


@app.command("prefect-env")
def prefect_env() -> None:
    """Print `export` lines that point Prefect's own commands (server, deploy, worker) at
    this data folder's local server, with its auth string: `eval "$(photoindex prefect-env)"`."""
    from photoindex.prefect_server import PrefectUnavailable, shell_exports

    try:
        typer.echo(shell_exports(get_settings()))
    except PrefectUnavailable as e:
        raise fail(str(e)) from e


@app.command()
def indexer() -> None:
    """Run a warm indexer for the data folder: models stay loaded, sessions start at once.

    `photoindex serve` runs one for you; `photoindex index` uses one when it answers.
    """
    from photoindex.indexer import WarmIndexer

    settings = get_settings()
    _prefect(settings)
    WarmIndexer(settings).serve_forever()


def main() -> None:
    """Entry point of the `photoindex` script."""
    app()


if __name__ == "__main__":
    main()

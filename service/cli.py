"""The `semid` command line: train, inspect, assign, export, serve, check, gc, evaluate, quickstart."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from semid.model.training.cpu_threads import quiet_waiting

quiet_waiting()  # before torch or faiss load OpenMP: idle threads sleep, not spin (semid.model.training.cpu_threads)

from semid.model.data.catalog import CatalogError  # noqa: E402
from semid.service.errors import SemidError  # noqa: E402

log = logging.getLogger("semid")


class OneLineUsageError(click.UsageError):
    """A usage error (missing option, bad value, unknown command) shown as one `error: ...` line."""

    def show(self, file: Any = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{hint}", err=True)


def _one_line(err: click.UsageError) -> click.UsageError:
    if isinstance(err, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return err  # already one line, or a bare `semid` that prints the help
    return OneLineUsageError(err.format_message(), err.ctx)


class SemidGroup(click.Group):
    """Turns every failure into a one-line message and a non-zero exit code, never a stack trace."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:
            raise _one_line(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _one_line(err) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (
            SemidError,
            CatalogError,
            ValueError,
            KeyError,
            FileNotFoundError,
            FileExistsError,
            PermissionError,
        ) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            _close_progress_bars()
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("SEMID_DEBUG"):
                raise
            _close_progress_bars()
            click.echo(f"error: {type(err).__name__}: {err} (set SEMID_DEBUG=1 for a traceback)", err=True)
            ctx.exit(1)


def _close_progress_bars() -> None:
    """End any progress bar still drawn, so the error that follows starts on its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        bar.leave = True  # a closed bar that leaves its line ends it with a newline
        bar.close()


@click.group(cls=SemidGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """semid: semantic IDs for generative recommenders."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _load_catalog(
    catalog: str | None,
    ids: str | None,
    id_column: str,
    embedding_column: str,
    synthetic_items: int,
    synthetic_dim: int,
    seed: int,
    keep: tuple[str, ...] = (),
):
    from semid.model.data.catalog import read_catalog
    from semid.model.data.synthetic import synthetic_catalog

    if catalog is None:
        click.echo(
            f"no --catalog given: using the built-in synthetic catalog ({synthetic_items} items, "
            f"dim {synthetic_dim}, seed {seed})",
            err=True,
        )
        return synthetic_catalog(items=synthetic_items, dim=synthetic_dim, seed=seed)
    return read_catalog(
        catalog, id_column=id_column, embedding_column=embedding_column, ids_path=ids, keep_columns=keep
    )


def catalog_options(fn):
    fn = click.option("--embedding-column", default="embedding", show_default=True, help="Embedding column.")(fn)
    fn = click.option("--id-column", default="item_id", show_default=True, help="Item id column.")(fn)
    fn = click.option("--ids", type=click.Path(dir_okay=False), help="Item ids for a .npy catalog (.npy or text).")(fn)
    return fn


def _config_flag(field):
    """A click option derived from one declared config field (type, choices, range and help)."""
    from typing import get_args, get_origin

    annotation = field.info.annotation
    help_text = f"{field.info.description} [{field.section}.{field.name}, default {field.info.default!r}]"
    if annotation is bool:
        name = field.name.replace("_", "-")
        return click.option(f"--{name}/--no-{name}", field.name, default=None, help=help_text)
    if get_origin(annotation) is tuple:
        return click.option(field.flag, field.name, type=IntList(), help=help_text + " (comma-separated)")
    if get_args(annotation) and all(isinstance(a, str) for a in get_args(annotation)):
        return click.option(field.flag, field.name, type=click.Choice(get_args(annotation)), help=help_text)
    kind = int if annotation is int else float
    return click.option(field.flag, field.name, type=kind, help=help_text)


class IntList(click.ParamType):
    name = "INTS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)


def config_options(fn):
    """One flag per training-config field (input_dim comes from the catalog)."""
    from semid.model.config import config_fields

    for field in reversed(list(config_fields(exclude=("input_dim",)))):
        fn = _config_flag(field)(fn)
    return fn


@main.command()
@click.option("--catalog", type=click.Path(dir_okay=False), help="Parquet or .npy catalog (default: synthetic).")
@catalog_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON config (model/train sections).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--synthetic-items", default=20_000, show_default=True, help="Size of the synthetic catalog.")
@click.option("--synthetic-dim", default=384, show_default=True, help="Dimension of the synthetic catalog.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--interactions",
    type=click.Path(dir_okay=False),
    help="CSV or Parquet of user, item[, rating] (items: the catalog's ids): co-liked items are pulled under one "
    "first code (RQ-VAE; settings --coliked-*). Encoding still reads embeddings only.",
)
@click.option("--user-column", help="User column of --interactions (default: user, user_id, userId ...).")
@click.option("--item-column", help="Item column of --interactions (default: item, item_id, movieId ...).")
@click.option("--rating-column", help="Rating column of --interactions (default: rating; none: every row is a like).")
@config_options
def train(
    catalog,
    ids,
    id_column,
    embedding_column,
    out,
    config_file,
    resume,
    synthetic_items,
    synthetic_dim,
    quiet,
    interactions,
    user_column,
    item_column,
    rating_column,
    **overrides,
) -> None:
    """Fit an RQ-VAE (or RQ-KMeans) tokenizer and write a checkpoint directory.

    Every config field is also a flag; flags override --config, which overrides the defaults.
    With --interactions, items liked by the same users (rating >= --coliked-min-rating) share first codes
    more often; the checkpoint's metrics.json records the file (name, sha256), its counts and the settings.
    """
    from semid.model.config import SECTIONS, SemidConfig, clamp_warm_ups
    from semid.model.training.job import train_tokenizer

    config = SemidConfig.from_file(config_file) if config_file else SemidConfig().validate()
    if overrides.get("epochs") is not None:  # a shorter run: lower the warm-ups the user did not set
        given = {k for k, v in overrides.items() if v is not None}
        lowered = clamp_warm_ups(config.train, overrides["epochs"], given)
        for name, value in lowered.items():
            flag = "--" + name.replace("_", "-")
            click.echo(
                f"note: {name} lowered from {getattr(config.train, name)} to {value} to fit --epochs "
                f"{overrides['epochs']} (set {flag} to choose)",
                err=True,
            )
        overrides.update(lowered)
    for section, kind in SECTIONS.items():
        config = config.with_overrides(section, **{k: v for k, v in overrides.items() if k in kind.model_fields})
    from semid.model.training.collab import check_options

    check_options(config, interactions=interactions is not None)  # e.g. --collab-align without --interactions
    cat = _load_catalog(catalog, ids, id_column, embedding_column, synthetic_items, synthetic_dim, config.train.seed)
    coliked = None
    if interactions is not None:
        from semid.model.first_level.coliked import check_trainable, read_coliked

        check_trainable(config)  # before reading the file
        coliked = read_coliked(
            interactions,
            cat.item_ids,
            config.train,
            user_column=user_column,
            item_column=item_column,
            rating_column=rating_column,
        )
        r = coliked.record
        click.echo(
            f"interactions {r['file']}: {r['likes']} likes of {r['users']} users, {r['items_with_partners']} items "
            f"with co-liked partners; {r['unknown_items']} items not in the catalog ignored",
            err=True,
        )
    elif user_column or item_column or rating_column:
        raise click.UsageError("--user-column, --item-column and --rating-column go with --interactions")
    click.echo(f"training {config.model.tokenizer} on {len(cat)} items x {cat.dim} dims -> {out}", err=True)
    fingerprint, metrics = train_tokenizer(
        cat.embeddings,
        config,
        out,
        resume=resume,
        progress=not quiet,
        coliked=coliked,
        note=(lambda line: click.echo(line, err=True)) if quiet else None,
    )
    click.echo(_final_line(metrics))
    click.echo(f"checkpoint {out} (fingerprint {fingerprint})")


def _final_line(metrics: dict[str, Any]) -> str:
    from semid.model.training.metrics import levels_from_flat

    f = metrics["final"]
    levels = levels_from_flat(f)  # the checkpoint's per-level figures, level 1 first
    util = "/".join(f"{100 * lv['utilisation']:.0f}%" for lv in levels)
    perplexity = "/".join(f"{lv['perplexity']:.0f}" for lv in levels)
    return (
        f"done in {metrics['train_seconds']}s: recon_mse {f['recon_mse']:.4f}, "
        f"utilisation {util}, "
        f"perplexity {perplexity}, "
        f"base collisions {100 * f['base_collision_rate']:.2f}%"
    )


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(checkpoint, as_json) -> None:
    """Print a checkpoint's config and final metrics."""
    from semid.model.training.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    final = ck.metrics.get("final", {})
    if as_json:
        click.echo(
            json.dumps(
                {
                    "fingerprint": ck.fingerprint,
                    "config": ck.config.to_dict(),
                    "final": final,
                    "items": ck.metrics.get("items"),
                    "train_seconds": ck.metrics.get("train_seconds"),
                    "interactions": ck.metrics.get("interactions"),
                    "graph_targets": ck.metrics.get("graph_targets"),
                },
                indent=2,
            )
        )
        return
    click.echo(f"checkpoint   {ck.path}")
    click.echo(f"fingerprint  {ck.fingerprint}")
    for section, values in ck.config.to_dict().items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"  {key} = {value}")
    click.echo("[final metrics]")
    click.echo(f"  items = {ck.metrics.get('items')}, train_seconds = {ck.metrics.get('train_seconds')}")
    for key, value in final.items():
        click.echo(f"  {key} = {value}")
    if ck.metrics.get("graph_targets"):  # the catalog's measurement and decision (semid.model.first_level.adaptive)
        click.echo("[graph targets]")
        for key, value in ck.metrics["graph_targets"].items():
            click.echo(f"  {key} = {value}")
    if ck.metrics.get("interactions"):  # what `semid train --interactions` blended in
        click.echo("[interactions]")
        for key, value in ck.metrics["interactions"].items():
            click.echo(f"  {key} = {value}")


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Parquet file to write.")
@click.option("--items", default=20_000, show_default=True, type=click.IntRange(1, 50_000_000))
@click.option("--dim", default=384, show_default=True, type=click.IntRange(2, 65536))
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out, items, dim, seed) -> None:
    """Write the seeded synthetic catalog (categories > sub-categories > items, with duplicates)."""
    from semid.model.data.synthetic import synthetic_catalog, write_catalog

    path = write_catalog(synthetic_catalog(items=items, dim=dim, seed=seed), out)
    click.echo(f"wrote {items} items x {dim} dims to {path}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint directory from `semid train`.")
@click.option("--catalog", required=True, type=click.Path(), help="Parquet or .npy catalog.")
@catalog_options
@click.option(
    "--index", "index_dir", required=True, type=click.Path(file_okay=False), help="Index to create or extend."
)
@click.option("--keep-columns", default="", help="Comma-separated catalog columns to keep (e.g. title,genres).")
@click.option("--batch-rows", default=65536, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--wait-lock", default=0.0, show_default=True, type=float, help="Seconds to wait for another writer.")
@click.option(
    "--recode-changed",
    is_flag=True,
    help="Re-code known items whose embedding changed: same base code keeps the ID, else a new ID "
    "(the old one stays reserved). Without it they keep their IDs and are only reported.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process. ray: Ray Data (extra semid[ray]); reads a Parquet file or directory; same IDs.",
)
@click.option("--ray-address", help="--engine ray: the Ray cluster to join (default: a local Ray on this machine).")
@click.option("--workers", type=click.IntRange(1), help="--engine ray: encoding actors (default: the cluster's CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def assign(
    checkpoint,
    catalog,
    ids,
    id_column,
    embedding_column,
    index_dir,
    keep_columns,
    batch_rows,
    wait_lock,
    recode_changed,
    engine,
    ray_address,
    workers,
    as_json,
    quiet,
) -> None:
    """Encode a catalog, resolve collisions and write (or extend) an index; existing IDs only change
    with --recode-changed."""
    keep = tuple(c.strip() for c in keep_columns.split(",") if c.strip())
    common = {
        "checkpoint": checkpoint,
        "catalog": catalog,
        "index_dir": index_dir,
        "keep_columns": keep,
        "id_column": id_column,
        "embedding_column": embedding_column,
        "batch_rows": batch_rows,
        "lock_timeout": wait_lock,
        "progress": not quiet,
        "recode_changed": recode_changed,
    }
    if engine == "ray":
        from semid.service.assign_ray import assign_catalog_ray

        if ids:
            raise click.UsageError("--ids is for .npy catalogs; --engine ray reads Parquet")
        summary = assign_catalog_ray(**common, workers=workers, ray_address=ray_address)
    else:
        from semid.service.assign import assign_catalog

        if ray_address or workers:
            raise click.UsageError("--ray-address and --workers need --engine ray")
        summary = assign_catalog(**common, ids_path=ids)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        for line in summary.lines():
            click.echo(line)


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Parquet file to write.")
@click.option("--vocab", type=click.Path(dir_okay=False), help="Also write the token vocabulary (JSON) here.")
@click.option("--trie", type=click.Path(dir_okay=False), help="Also write the trie of valid IDs (npz) here.")
@click.option(
    "--vocab-offset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Flat id of the first token (the size of an LLM vocabulary to append to).",
)
@click.option("--special-tokens", is_flag=True, help="Add pad, bos and eos tokens after the codes in --vocab.")
def export(index_dir, out, vocab, trie, vocab_offset, special_tokens) -> None:
    """Write item_id, semantic_id (list of ints) and token for every item to Parquet; with --vocab and
    --trie, the token vocabulary and the trie for constrained decoding of the same snapshot too."""
    from semid.service.export import export_index

    rows = export_index(
        index_dir, out, vocab=vocab, trie=trie, vocab_offset=vocab_offset, special_tokens=special_tokens
    )
    click.echo(f"wrote {rows} items to {out}")
    for what, path in (("vocab", vocab), ("trie", trie)):
        if path is not None:
            click.echo(f"wrote the {what} to {path}")


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False))
def check(index_dir) -> None:
    """Consistency check: segments present and readable, counts match, no duplicate IDs or items."""
    from semid.service.index.check import check_index
    from semid.service.index.handle import SemanticIdIndex
    from semid.service.index.object_store import parse_store_uri

    if parse_store_uri(index_dir) is not None:  # the store's files, fetched into the cache and checksummed
        report = SemanticIdIndex.open(index_dir, read_only=True).check()
    else:
        report = check_index(index_dir)
    click.echo(f"{index_dir}: {report.item_count} items in {report.segment_count} segments")
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if not report.ok:
        raise click.exceptions.Exit(1)
    click.echo("ok")


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False), help="Directory or s3://...")
@click.option(
    "--grace-minutes",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Object storage: keep unlisted objects younger than this (a write in flight uploads before it commits).",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
def gc(index_dir, grace_minutes, dry_run) -> None:
    """Delete the files or objects no manifest lists: crashed or losing writers' uploads, folded segments."""
    from semid.service.index.garbage import collect_garbage

    report = collect_garbage(index_dir, grace_seconds=grace_minutes * 60.0, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    kept = f"; kept {len(report.young)} younger than {grace_minutes:g} min" if report.index.startswith("s3://") else ""
    click.echo(
        f"{report.index}: version {report.version}, {report.listed} listed; "
        f"{verb} {len(report.removed)} unlisted ({report.removed_bytes} bytes){kept}"
    )
    for name in report.removed:
        click.echo(f"{'would delete' if dry_run else 'deleted'}: {name}")


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own malloc arena, and each arena keeps its high-water mark: a server whose
    writes copy index-sized arrays on many worker threads grows by ~100 MB that way. Cap them (before any
    thread starts) unless MALLOC_ARENA_MAX is set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to cap
        pass


# `semid serve` flag -> ServiceSettings field; type, range, default and help come from the field (one home)
SERVE_FLAGS = {
    "--index": "index_dir",
    "--checkpoint": "checkpoint_dir",
    "--host": "host",
    "--port": "port",
    "--max-batch": "max_batch",
    "--max-body-bytes": "max_body_bytes",
    "--max-page": "max_page",
    "--max-k": "max_k",
    "--write-lock-timeout": "write_lock_timeout",
    "--workers-threads": "threads",
    "--header-timeout": "header_timeout",
    "--body-idle-timeout": "body_idle_timeout",
    "--body-timeout": "body_timeout",
    "--max-header-bytes": "max_header_bytes",
    "--send-timeout": "send_timeout",
    "--max-connections": "max_connections",
    "--max-connections-per-client": "max_connections_per_client",
    "--write-rate-limit": "write_rate_limit",
    "--read-rate-limit": "read_rate_limit",
    "--rate-limit-window": "rate_limit_window",
    "--report-dir": "report_dir",
    "--workers": "workers",
    "--read-only": "read_only",
    "--store-poll-seconds": "store_poll_seconds",
    "--store-stale-seconds": "store_stale_seconds",
}


def serve_options(fn):
    from semid.service.api.settings import ServiceSettings

    for flag, name in reversed(SERVE_FLAGS.items()):
        info = ServiceSettings.model_fields[name]
        kinds = {int: int, float: float, str: str}
        annotation = info.annotation
        kind = next((k for t, k in kinds.items() if annotation in (t, t | None)), click.Path(file_okay=False))
        default = "" if info.default is None else f", default {info.default}"
        help_text = f"{info.description} (SEMID_{name.upper()}{default})"
        if annotation is bool:
            fn = click.option(flag, name, is_flag=True, default=None, help=help_text)(fn)
            continue
        fn = click.option(flag, name, type=kind, default=None, help=help_text)(fn)
    return fn


def _serve_settings(flags: dict[str, Any]):
    """ServiceSettings from the environment (SEMID_*), overridden by the flags given; one-line errors."""
    from pydantic import ValidationError

    from semid.service.api.settings import ServiceSettings

    try:
        return ServiceSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        flag = next((f for f, n in SERVE_FLAGS.items() if n == name), f"SEMID_{name.upper()}")
        raise click.BadParameter(f"{first['msg']} (got {first.get('input')!r})", param_hint=flag) from None


@main.command()
@serve_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve(log_level, **flags) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs); the API key comes from SEMID_API_KEY."""
    import uvicorn

    from semid.service.api.app import create_app
    from semid.service.api.state import ServiceState
    from semid.service.api.transport import quiet_disconnects, serve_protocol

    _cap_malloc_arenas()
    settings = _serve_settings(flags)
    if settings.workers > 1:  # N processes on one port, each loading the index (service/api/workers.py)
        from semid.service.api.workers import serve_workers

        logging.getLogger().setLevel(log_level.upper())
        serve_workers(settings, log_level=log_level, echo=lambda line: click.echo(line, err=True))
        return
    state = ServiceState.load(settings)  # fail here, with a one-line error, before the server starts
    logging.getLogger().setLevel(log_level.upper())
    quiet_disconnects()
    where = f"http://{settings.host}:{settings.port}"
    click.echo(f"serving {len(state.index)} items from {settings.index_dir} on {where} (docs: /docs)", err=True)
    uvicorn.run(
        create_app(settings, state=state),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        http=serve_protocol(settings),
        timeout_keep_alive=5,
    )


@main.command()
@click.option("--out", default="quickstart", show_default=True, type=click.Path(file_okay=False))
@click.option("--items", default=10_000, show_default=True, type=click.IntRange(100, 10_000_000))
@click.option("--dim", default=128, show_default=True, type=click.IntRange(2, 65536))
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--seed", default=0, show_default=True, type=int)
def quickstart(out, items, dim, epochs, seed) -> None:
    """Synthetic catalog -> train -> assign -> export -> look-ups, end to end on this machine."""
    from semid.service.quickstart import run_quickstart

    run_quickstart(out, items=items, dim=dim, epochs=epochs, seed=seed, echo=click.echo, semid=_invoked_as())


def _invoked_as() -> str:
    """How to run `semid` again from here: plain `semid` if that is on PATH and is this one, else this one's path."""
    import shutil
    from pathlib import Path

    me = Path(sys.argv[0])
    if me.name != "semid":
        return "semid"
    on_path = shutil.which("semid")
    if on_path and Path(on_path).resolve() == me.resolve():
        return "semid"
    try:
        return str(me.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(me.resolve())


@main.command()
@click.option("--index", "index_dir", type=click.Path(file_okay=False), help="Index to evaluate.")
@click.option("--catalog", required=True, type=click.Path(), help="The catalog the index was built from.")
@click.option(
    "--holdout-share",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    help="Instead of an index: hold out this seeded share of the catalog, train on the rest into --out/checkpoint, "
    "and report every figure for held-out and for trained items.",
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="With --holdout-share: JSON config.")
@catalog_options
@click.option("--interactions", type=click.Path(), help="CSV or Parquet of user, item, rating (co-liked test).")
@click.option("--user-column", help="User column of --interactions (default: user, user_id, userId ...).")
@click.option("--item-column", help="Item column of --interactions (default: item, item_id, movieId ...).")
@click.option("--rating-column", help="Rating column of --interactions (default: rating).")
@click.option("--min-rating", default=4.0, show_default=True, type=float, help="Ratings at or above this are likes.")
@click.option(
    "--out", default="evaluation", show_default=True, type=click.Path(file_okay=False), help="Where to write."
)
@click.option("--sample", default=2000, show_default=True, type=click.IntRange(1, 10_000_000), help="Items sampled.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Nearest neighbours per item.")
@click.option("--pairs", default=100_000, show_default=True, type=click.IntRange(1, 10_000_000), help="Co-liked pairs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every sample.")
def evaluate(
    index_dir,
    catalog,
    holdout_share,
    config_file,
    ids,
    id_column,
    embedding_column,
    interactions,
    user_column,
    item_column,
    rating_column,
    min_rating,
    out,
    sample,
    k,
    pairs,
    seed,
) -> None:
    """Measure an index's IDs against its catalog; write metrics.json and a self-contained report.html."""
    from pathlib import Path

    if (index_dir is None) == (holdout_share is None):
        raise click.UsageError("pass either --index or --holdout-share")
    if holdout_share is not None:
        _evaluate_holdout(catalog, out, holdout_share, config_file, seed, k, sample, ids, id_column, embedding_column)
        return
    if config_file is not None:
        raise click.UsageError("--config goes with --holdout-share")
    from semid.service.evaluation.run import METRICS_FILE, REPORT_FILE, EvaluationOptions, run_evaluation

    options = EvaluationOptions(
        sample=sample,
        k=k,
        seed=seed,
        pairs=pairs,
        min_rating=min_rating,
        id_column=id_column,
        embedding_column=embedding_column,
        ids_path=ids,
        user_column=user_column,
        item_column=item_column,
        rating_column=rating_column,
    )
    metrics = run_evaluation(index_dir, catalog, out, interactions=interactions, options=options)
    for v in metrics["verdicts"]:
        click.echo(f"{v['status']:<6} {v['label']:<36} {v['value']}")
        if v.get("advice"):
            click.echo(f"{'':<6} -> {v['advice']}")
    click.echo(f"wrote {Path(out) / METRICS_FILE} and {Path(out) / REPORT_FILE}")


def _evaluate_holdout(catalog, out, share, config_file, seed, k, sample, ids, id_column, embedding_column) -> None:
    from pathlib import Path

    from semid.model.config import SemidConfig
    from semid.service.evaluation.holdout import SUBSETS, evaluate_holdout

    config = SemidConfig.from_file(config_file) if config_file else None
    metrics = evaluate_holdout(
        catalog,
        out,
        share=share,
        seed=seed,
        config=config,
        k=k,
        sample=sample,
        id_column=id_column,
        embedding_column=embedding_column,
        ids_path=ids,
    )
    h = metrics["holdout"]
    click.echo(f"trained on {h['train_items']} items, held out {h['heldout_items']} (seed {seed})")
    keys = ("items", "base_collision_rate", "collides_with_catalog", "perplexity_l1", "nn_share_d1", "recon_mse")
    click.echo(f"{'subset':<8} " + " ".join(f"{key:>21}" for key in keys))
    for name in SUBSETS:
        click.echo(f"{name:<8} " + " ".join(f"{metrics[name]['summary'][key]!s:>21}" for key in keys))
    click.echo(f"wrote {Path(out) / 'metrics.json'} and the checkpoint {metrics['checkpoint']}")


@main.command()
@click.option("--from", "old_index", required=True, type=click.Path(file_okay=False), help="The old index.")
@click.option("--to", "new_index", required=True, type=click.Path(file_okay=False), help="The new index.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Parquet map to write.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
def migrate(old_index, new_index, out, report_path) -> None:
    """Map every item's old semantic ID to its new one (items in only one index get a null side)."""
    from semid.service.migration import write_migration

    report = write_migration(old_index, new_index, out, report_path)
    for line in report.lines():
        click.echo(line)
    click.echo(f"wrote {out}" + (f" and {report_path}" if report_path else ""))


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False), help="The new checkpoint.")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False), help="Old checkpoint or index.")
@click.option("--catalog", required=True, type=click.Path(dir_okay=False), help="Catalog to match codes on.")
@catalog_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Aligned checkpoint to write.")
def align(checkpoint, target, catalog, ids, id_column, embedding_column, out) -> None:
    """Renumber a checkpoint's codes (one permutation per level) to agree most with an old checkpoint or index."""
    from semid.service.migration import align_checkpoint

    summary = align_checkpoint(
        checkpoint, target, catalog, out, id_column=id_column, embedding_column=embedding_column, ids_path=ids
    )
    for line in summary.lines():
        click.echo(line)
    click.echo(f"checkpoint {out} (fingerprint {summary.fingerprint})")


if __name__ == "__main__":
    sys.exit(main())

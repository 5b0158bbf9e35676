"""Reading a user-item interactions file (CSV or Parquet): the one home of its column detection.

`semid train --interactions` (semid.model.first_level.coliked) and `semid evaluate --interactions`
(semid.service.evaluation.interactions) read the same files: the user, item and rating columns are
found by name (or named by the caller), and only those columns are read.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

USER_COLUMNS = ("user", "user_id", "userId", "userid", "uid")
ITEM_COLUMNS = ("item", "item_id", "itemId", "movieId", "movie_id", "iid")
RATING_COLUMNS = ("rating", "score", "stars")


def read_interaction_columns(
    path: Path,
    user_column: str | None,
    item_column: str | None,
    rating_column: str | None,
    *,
    rating_required: bool,
    error: type[Exception],
) -> tuple[pa.Table, dict[str, str | None]]:
    """(table with columns ``user``, ``item`` and, when found, ``rating``; the file's column of each role).

    Without ``rating_required`` a file without a rating column is read without one (its role maps to None).
    Every problem raises ``error`` with a one-line message naming the file and the column."""
    if not path.is_file():
        raise error(f"interactions file {path} does not exist")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        if parquet:
            names = pq.ParquetFile(path).schema_arrow.names
        else:
            with open(path, encoding="utf-8", errors="replace") as fh:
                names = [n.strip().strip('"') for n in fh.readline().rstrip("\r\n").split(",")]
    except (pa.ArrowInvalid, OSError) as err:
        raise error(f"interactions {path} is not readable: {err}") from err
    cols = {
        "user": _pick(names, user_column, USER_COLUMNS, "user", path, error, required=True),
        "item": _pick(names, item_column, ITEM_COLUMNS, "item", path, error, required=True),
        "rating": _pick(names, rating_column, RATING_COLUMNS, "rating", path, error, required=rating_required),
    }
    wanted = [c for c in cols.values() if c is not None]
    try:
        if parquet:
            table = pq.read_table(path, columns=wanted)
        else:
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=wanted))
    except (pa.ArrowInvalid, OSError) as err:
        raise error(f"interactions {path} is not readable: {err}") from err
    return pa.table({role: table.column(name) for role, name in cols.items() if name is not None}), cols


def _pick(
    names: list[str],
    wanted: str | None,
    candidates: tuple[str, ...],
    role: str,
    path: Path,
    error: type[Exception],
    *,
    required: bool,
) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise error(f"interactions {path} has no {role} column {wanted!r}; columns are {names}")
        return wanted
    lowered = {n.lower(): n for n in names}
    for cand in candidates:
        if cand.lower() in lowered:
            return lowered[cand.lower()]
    if not required:
        return None
    raise error(
        f"interactions {path} has no {role} column (looked for {', '.join(candidates)}); columns are {names}; "
        f"name it with --{role}-column"
    )

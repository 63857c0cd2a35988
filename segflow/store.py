"""The Parquet store: four hive-partitioned datasets under one root.

Layout
------
::

    OUT/
      metrics/config_hash=<hash>/part-<run_id>-<uuid4hex>.parquet   one row per image per config
      masks/config_hash=<hash>/part-<run_id>-<uuid4hex>.parquet     one row per (image, class) or instance
      errors/date=<YYYY-MM-DD>/part-<run_id>-<uuid4hex>.parquet     one row per file that failed
      runs/date=<YYYY-MM-DD>/part-<run_id>-<uuid4hex>.parquet       one row per run
      .staging/                                                      temporary files of writes in flight

Every :meth:`Store.write` call adds exactly one new file, named after the run and a random
``uuid4``, so concurrent runs (threads, processes, machines sharing a disk) never write the same
name, and no file is ever rewritten.  The file is first written under ``OUT/.staging/`` (outside
every dataset folder, same filesystem), flushed and fsync'ed, then moved into place with
``os.replace``: readers see the whole file or nothing.  Temporary files live outside the dataset
folders on purpose: DuckDB's ``**/*.parquet`` glob and Polars' directory scan do *not* skip
names starting with ``.`` or ``_`` (pyarrow does), so a half-written file beside the real ones
would break them.

Partitioning
------------
``metrics`` and ``masks`` are partitioned by ``config_hash`` (one folder per configuration: few
folders, and :meth:`Store.processed` reads one folder).  In those two datasets the column lives
*only in the folder name*: pandas, DuckDB and Polars rebuild it from the path (a file that also
held the column makes ``pandas.read_parquet`` fail with "incompatible types: string vs
dictionary").  Readers infer the type of a partition value, so a value such as ``0123`` would come
back as the integer 123 and ``1e5`` as a float; :func:`check_partition_value` therefore refuses
config hashes that any of the three readers would parse as a number, date, boolean or null (a
hash that starts with a letter other than the start of ``inf``/``nan``/``true``/``false`` is always
accepted).  ``errors`` and ``runs`` are partitioned by ``date``, the UTC day the file was written
(their ``config_hash`` may be null, so it stays an ordinary column); DuckDB and Polars read
``date`` as a DATE, pandas as a categorical of strings.

Reading the store
-----------------
Unchanged, with any of these (``config_hash`` is a string column in all three; pandas gives it as
a ``category`` of strings)::

    pandas.read_parquet("OUT/metrics")
    polars.read_parquet("OUT/metrics")                    # or polars.scan_parquet("OUT/metrics")
    duckdb.sql(\"\"\"
        SELECT segmenter, count(*) AS images, avg(fg_iou) AS mean_iou
        FROM read_parquet('OUT/metrics/**/*.parquet', hive_partitioning = true)
        GROUP BY segmenter
    \"\"\")

Add ``union_by_name = true`` to DuckDB's ``read_parquet`` when the store holds files of several
schema versions.  :meth:`Store.read` returns a pandas DataFrame with exactly the columns of
:data:`SCHEMAS`, earlier schema versions upgraded, integer and boolean columns as pandas'
nullable ``Int64`` / ``Int32`` / ``boolean`` dtypes (a null count never turns into a float).
Masks decode with pycocotools unchanged::

    pycocotools.mask.decode({"size": [row.height, row.width], "counts": row.rle_counts})

Values
------
* Undefined or missing scores are stored as **null, never NaN** (NaN given for a float column,
  also inside ``class_iou`` lists, is written as null), so SQL ``avg()`` and Polars ``mean()`` skip
  them instead of returning NaN.  ``has_ground_truth`` tells "no ground truth" from "undefined".
* Timestamps are ``timestamp[us, UTC]``; naive datetimes are refused (ambiguous).
  ``created_at`` is filled with the current time when a row leaves it out.
* ``runs.parameters`` is a JSON string; a mapping given there is serialised with sorted keys.
* Columns marked required in :data:`REQUIRED` must be present and non-null; every other column
  may be left out (stored as null); a column that is not in the schema raises ``ValueError``.

Schema versions
---------------
Each file carries ``segflow.schema_version`` (and ``segflow.dataset``) in its Parquet key-value
metadata.  :meth:`Store.read` upgrades older files step by step through :data:`UPGRADES`
(``version -> function`` taking a table of that version to the next one), then fills columns
added since with nulls and casts to the current schema.  A file without the key counts as version
0, the layout before versioning.  A file from a newer segflow raises ``ValueError``.

Root
----
A local path (or ``file://`` URL), or any fsspec URL (``memory://``, ``s3://`` with s3fs, ...).
On object stores the final object appears atomically on upload; the staging copy is removed after.
Nothing from the environment (credentials included) is ever written into the datasets.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from segflow import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Current schema version, stored in every file's metadata as ``segflow.schema_version``."""

DATASETS = ("metrics", "masks", "errors", "runs")

VERSION_KEY = b"segflow.schema_version"
DATASET_KEY = b"segflow.dataset"
STAGING_DIR = ".staging"

_TS = pa.timestamp("us", tz="UTC")
_TIMINGS = (
    "t_read_ms",
    "t_preprocess_ms",
    "t_segment_ms",
    "t_stitch_ms",
    "t_evaluate_ms",
    "t_total_ms",
)

SCHEMAS: dict[str, pa.Schema] = {
    "metrics": pa.schema(
        [
            ("image_id", pa.string()),
            ("source_uri", pa.string()),
            ("sha256", pa.string()),
            ("config_hash", pa.string()),  # partition column (folder name only)
            ("run_id", pa.string()),
            ("segmenter", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("n_instances", pa.int64()),
            ("fg_fraction", pa.float64()),
            *[(name, pa.float64()) for name in _TIMINGS],
            ("fg_tp", pa.int64()),
            ("fg_fp", pa.int64()),
            ("fg_fn", pa.int64()),
            ("fg_tn", pa.int64()),
            ("fg_iou", pa.float64()),
            ("fg_dice", pa.float64()),
            ("fg_precision", pa.float64()),
            ("fg_recall", pa.float64()),
            ("class_iou", pa.list_(pa.float64())),
            ("class_tp", pa.list_(pa.int64())),
            ("class_fp", pa.list_(pa.int64())),
            ("class_fn", pa.list_(pa.int64())),
            ("inst_tp", pa.int64()),
            ("inst_fp", pa.int64()),
            ("inst_fn", pa.int64()),
            ("inst_f1", pa.float64()),
            ("inst_mean_iou", pa.float64()),
            ("inst_pq", pa.float64()),
            ("dsb_score", pa.float64()),
            ("mean_entropy", pa.float64()),
            ("has_ground_truth", pa.bool_()),
            ("created_at", _TS),
        ]
    ),
    "masks": pa.schema(
        [
            ("image_id", pa.string()),
            ("sha256", pa.string()),
            ("config_hash", pa.string()),  # partition column (folder name only)
            ("run_id", pa.string()),
            ("class_id", pa.int32()),
            ("class_name", pa.string()),
            ("instance_id", pa.int32()),  # null for semantic (one mask per class) rows
            ("score", pa.float32()),
            # pycocotools toBbox semantics: [x, y, w, h] as floats holding whole pixels
            ("bbox_x", pa.float32()),
            ("bbox_y", pa.float32()),
            ("bbox_w", pa.float32()),
            ("bbox_h", pa.float32()),
            ("area", pa.int64()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("rle_counts", pa.string()),
        ]
    ),
    "errors": pa.schema(
        [
            ("image_id", pa.string()),  # null in files written before it was added
            ("source_uri", pa.string()),
            ("sha256", pa.string()),
            ("stage", pa.string()),
            ("error_type", pa.string()),
            ("message", pa.string()),
            ("run_id", pa.string()),
            ("config_hash", pa.string()),
            ("created_at", _TS),
        ]
    ),
    "runs": pa.schema(
        [
            ("run_id", pa.string()),
            ("flow_run_name", pa.string()),
            ("parameters", pa.string()),  # JSON
            ("config_hash", pa.string()),
            ("segflow_version", pa.string()),
            ("n_images", pa.int64()),
            ("n_done", pa.int64()),
            ("n_skipped", pa.int64()),
            ("n_failed", pa.int64()),
            ("started_at", _TS),
            ("ended_at", _TS),
            ("status", pa.string()),
        ]
    ),
}
"""The logical columns of each dataset (what :meth:`Store.read` returns), in order."""

PARTITION_COLUMN: dict[str, str] = {
    "metrics": "config_hash",
    "masks": "config_hash",
    "errors": "date",
    "runs": "date",
}
"""The hive partition key of each dataset.  ``config_hash`` is a schema column kept only in the
folder name; ``date`` (UTC day of the write) is a folder-only extra that :meth:`Store.read` drops."""

REQUIRED: dict[str, frozenset[str]] = {
    "metrics": frozenset(
        {
            "image_id",
            "source_uri",
            "sha256",
            "config_hash",
            "run_id",
            "segmenter",
            "width",
            "height",
        }
        | {"has_ground_truth", "created_at"}
    ),
    "masks": frozenset(
        {"image_id", "sha256", "config_hash", "run_id", "class_id", "area", "height", "width"}
        | {"rle_counts"}
    ),
    "errors": frozenset({"source_uri", "stage", "error_type", "message", "run_id", "created_at"}),
    "runs": frozenset({"run_id", "started_at", "status"}),
}
"""Columns that must be non-null in every row (``created_at`` is filled in when left out)."""

_AUTO_NOW = {"metrics": "created_at", "errors": "created_at"}


def _file_schema(dataset: str) -> pa.Schema:
    """The columns stored inside a file: the logical schema less a folder-only partition column."""
    schema = SCHEMAS[dataset]
    key = PARTITION_COLUMN[dataset]
    if key in schema.names:
        schema = schema.remove(schema.get_field_index(key))
    return schema


def _upgrade_0_to_1(table: pa.Table, dataset: str) -> pa.Table:
    """Version 0 (files without a version key) lacks columns added in v1; they become null later.

    Nothing is renamed or retyped between 0 and 1, so the table passes through; the final
    conforming step of :meth:`Store.read` fills every missing nullable column with nulls.
    """
    return table


UPGRADES: dict[int, Callable[[pa.Table, str], pa.Table]] = {0: _upgrade_0_to_1}
"""``from_version -> upgrade(table, dataset)`` giving the table at ``from_version + 1``."""

# --- partition values -------------------------------------------------------------------------

_SAFE_CHARS = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_DATE_LIKE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}")
_WORDS = {"true", "false", "nan", "inf", "infinity", "null", "none"}


def check_partition_value(value: str, *, key: str = "config_hash") -> str:
    """Return ``value`` if pandas, DuckDB and Polars all read it back as the same string.

    Allowed: 1 to 128 characters from ``A-Z a-z 0-9 _ . -``, not starting with ``_``, and not
    something a reader would parse as another type: a number (``0123``, ``1e5``, ``-5``, ``.5``,
    ``0x1f``, ``nan``, ``inf``), a boolean, a date or date-time, or a null marker.  Raises
    ``ValueError`` naming the value and the rule otherwise.
    """
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__} {value!r}")
    if not _SAFE_CHARS.match(value) or value.startswith("_"):
        raise ValueError(
            f"{key} {value!r} cannot be a partition folder: allowed are 1-128 characters from "
            "A-Z a-z 0-9 _ . - not starting with '_'"
        )
    numeric = value.lower().startswith("0x")
    try:
        float(value)
        numeric = True
    except ValueError:
        pass
    if numeric or value.lower() in _WORDS or _DATE_LIKE.match(value):
        raise ValueError(
            f"{key} {value!r} would be read back as a number, boolean, date or null by "
            "pandas/DuckDB/Polars hive partitioning; use a value that does not parse as one "
            "(for example one that starts with a letter, such as 'c' + hex digest)"
        )
    return value


# --- value normalisation ----------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _plain(value: Any, type_: pa.DataType, column: str) -> Any:
    """Python value ready for ``pa.array(..., type=type_)``: NaN -> None, numpy -> python."""
    if _is_missing(value):
        return None
    if pa.types.is_list(type_):
        if isinstance(value, str | bytes | Mapping):
            raise ValueError(
                f"{column} must be a sequence of numbers, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, np.ndarray):
            value = value.tolist()
        return [_plain(item, type_.value_type, column) for item in value]
    if pa.types.is_timestamp(type_):
        if isinstance(value, np.datetime64):
            raise ValueError(
                f"{column}: numpy datetime64 {value!r} has no time zone; give a timezone-aware datetime"
            )
        if isinstance(value, dt.datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(
                    f"{column}: naive datetime {value!r}; give a timezone-aware datetime "
                    "(e.g. datetime.now(timezone.utc))"
                )
            return value.astimezone(dt.UTC)
        raise ValueError(
            f"{column} must be a timezone-aware datetime, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, np.generic):
        value = value.item()
    if pa.types.is_string(type_) and not isinstance(value, str):
        raise ValueError(f"{column} must be a string, got {type(value).__name__} {value!r}")
    if pa.types.is_integer(type_) and isinstance(value, float):
        # pyarrow would truncate 1.5 to 1 without a word
        if not value.is_integer():
            raise ValueError(f"{column} must be a whole number, got {value!r}")
        return int(value)
    return value


def _to_arrow(dataset: str, rows: Sequence[Mapping[str, Any]], now: dt.datetime) -> pa.Table:
    """Cast ``rows`` to the dataset's logical schema (partition column included)."""
    schema = SCHEMAS[dataset]
    known = set(schema.names)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(
                f"{dataset} row {i} has unknown column(s) {unknown}; allowed columns: {schema.names}"
            )
    arrays = []
    for field in schema:
        name = field.name
        values = [row.get(name) for row in rows]
        if name == _AUTO_NOW.get(dataset):
            values = [now if _is_missing(v) else v for v in values]
        if dataset == "runs" and name == "parameters":
            values = [
                json.dumps(v, sort_keys=True, default=str) if isinstance(v, Mapping) else v
                for v in values
            ]
        if dataset == "runs" and name == "segflow_version":
            values = [__version__ if v is None else v for v in values]
        try:
            plain = [_plain(v, field.type, name) for v in values]
            array = pa.array(plain, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise ValueError(
                f"{dataset}.{name}: cannot store the given values as {field.type}: {exc}"
            ) from exc
        if name in REQUIRED[dataset] and array.null_count:
            first = next(i for i, v in enumerate(plain) if v is None)
            raise ValueError(
                f"{dataset}.{name} is required but row {first} has no value "
                f"(required columns: {sorted(REQUIRED[dataset])})"
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def _safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_\-]+", "-", text).strip("-")[:64]
    return cleaned or "run"


def _conform(table: pa.Table, dataset: str, columns: Sequence[str], source: str) -> pa.Table:
    """Cast an upgraded table to the current schema restricted to ``columns`` (nulls for new ones)."""
    schema = SCHEMAS[dataset]
    arrays = []
    for name in columns:
        field = schema.field(name)
        if name in table.column_names:
            column = table.column(name)
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            try:
                arrays.append(column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(
                    f"{source}: column {name} of type {column.type} cannot be read as {field.type}"
                ) from exc
        elif name in REQUIRED[dataset] and name != "created_at":
            raise ValueError(
                f"{source}: required column {name!r} is missing (file columns: {table.column_names})"
            )
        else:
            arrays.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in columns]))


_PANDAS_TYPES: dict[pa.DataType, Any] = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


# --- the store --------------------------------------------------------------------------------


class Store:
    """The four Parquet datasets under ``root`` (a local path or an fsspec URL).

    Parameters
    ----------
    root : str or Path
        Folder of the store; created on the first write.
    fsync : bool
        Flush each local file to disk before it is moved into place (crash safety; default on).
    """

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        text = str(root)
        self.root = text
        self.fsync = fsync
        self._local = "://" not in text or text.startswith("file://")
        if self._local:
            local = Path(text.removeprefix("file://")).expanduser().resolve()
            self._root_path: str = str(local)
            self._fs: pafs.FileSystem = pafs.LocalFileSystem()
            self._fsspec: Any = None
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(text)
            self._fsspec = fs
            self._root_path = path.rstrip("/")
            self._fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # -- paths ---------------------------------------------------------------------------------

    def _check_dataset(self, dataset: str) -> None:
        if dataset not in SCHEMAS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")

    def _dir(self, dataset: str) -> str:
        self._check_dataset(dataset)
        return f"{self._root_path}/{dataset}"

    def path(self, dataset: str) -> Path:
        """Local folder of ``dataset`` (``ValueError`` for a URL root: use :meth:`url`)."""
        if not self._local:
            raise ValueError(f"store root {self.root!r} is not local; use Store.url({dataset!r})")
        return Path(self._dir(dataset))

    def url(self, dataset: str) -> str:
        """Location of ``dataset`` as a path (local root) or URL (fsspec root)."""
        folder = self._dir(dataset)
        if self._local:
            return folder
        return str(self._fsspec.unstrip_protocol(folder))

    def _files(self, folder: str) -> list[tuple[str, dict[str, str]]]:
        """Parquet files under ``folder`` (recursively) with their ``key=value`` partitions.

        Like pyarrow, names (files or folders) starting with ``.`` or ``_`` are skipped.
        """
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        found = []
        for info in self._fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
                continue
            relative = info.path[len(folder) :].strip("/").split("/")
            if any(part.startswith((".", "_")) for part in relative):
                continue
            parts = dict(p.split("=", 1) for p in relative[:-1] if "=" in p)
            found.append((info.path, parts))
        found.sort()
        return found

    # -- writing -------------------------------------------------------------------------------

    def write(self, dataset: str, rows: Sequence[Mapping[str, Any]]) -> Path | str | None:
        """Append ``rows`` to ``dataset`` as one new Parquet file; return its path (None if no rows).

        Rows are cast to :data:`SCHEMAS` ``[dataset]``: left-out nullable columns become null, NaN
        becomes null, an unknown column or a null in a :data:`REQUIRED` column raises
        ``ValueError``.  All rows of one ``metrics``/``masks`` call share one ``config_hash``.
        The file goes to ``<dataset>/<key>=<value>/part-<run_id>-<uuid4hex>.parquet`` through a
        temporary file and an atomic rename; nothing is ever overwritten.  The return value is a
        ``Path`` for a local store, the URL for an fsspec one.
        """
        self._check_dataset(dataset)
        if isinstance(rows, Mapping):
            raise ValueError(
                f"rows must be a sequence of mappings, got a single {type(rows).__name__}"
            )
        rows = list(rows)
        if not rows:
            return None
        now = dt.datetime.now(dt.UTC)
        table = _to_arrow(dataset, rows, now)
        key = PARTITION_COLUMN[dataset]
        if key == "config_hash":
            hashes = set(table.column("config_hash").to_pylist())
            if len(hashes) != 1:
                raise ValueError(
                    f"{dataset} rows span several config_hash values {sorted(hashes)}; write each separately"
                )
            value = check_partition_value(hashes.pop())
            table = table.drop_columns(["config_hash"])
        else:
            value = now.date().isoformat()
        run_ids = set(table.column("run_id").to_pylist())
        run_part = _safe_name(run_ids.pop()) if len(run_ids) == 1 else "mixed"
        name = f"part-{run_part}-{uuid.uuid4().hex}.parquet"
        table = table.replace_schema_metadata(
            {VERSION_KEY: str(SCHEMA_VERSION).encode(), DATASET_KEY: dataset.encode()}
        )
        folder = f"{self._dir(dataset)}/{key}={value}"
        final = f"{folder}/{name}"
        staging = f"{self._root_path}/{STAGING_DIR}"
        temp = f"{staging}/{dataset}-{name}.tmp"
        if self._local:
            self._write_local(table, temp, final)
            log.debug("wrote %d %s rows to %s", table.num_rows, dataset, final)
            return Path(final)
        self._fs.create_dir(staging, recursive=True)
        self._fs.create_dir(folder, recursive=True)
        try:
            with self._fs.open_output_stream(temp) as stream:
                pq.write_table(table, stream, compression="zstd")
            self._fs.move(temp, final)
        finally:
            if self._fs.get_file_info(temp).type == pafs.FileType.File:
                self._fs.delete_file(temp)
        url = f"{self.url(dataset)}/{key}={value}/{name}"
        log.debug("wrote %d %s rows to %s", table.num_rows, dataset, url)
        return url

    def _write_local(self, table: pa.Table, temp: str, final: str) -> None:
        os.makedirs(os.path.dirname(temp), exist_ok=True)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            with open(temp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        if self.fsync and hasattr(os, "O_DIRECTORY"):
            fd = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- reading -------------------------------------------------------------------------------

    def _read_file(
        self, dataset: str, path: str, parts: dict[str, str], columns: Sequence[str]
    ) -> pa.Table:
        with self._fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            metadata = parquet.schema_arrow.metadata or {}
            try:
                version = int(metadata.get(VERSION_KEY, b"0"))
            except ValueError as exc:
                raise ValueError(
                    f"{path}: schema version {metadata[VERSION_KEY]!r} is not an integer"
                ) from exc
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"{path} has schema version {version}, newer than this segflow reads "
                    f"(versions 0..{SCHEMA_VERSION}); upgrade segflow"
                )
            present = set(parquet.schema_arrow.names)
            # Read what is asked for, plus anything an upgrade step might rename from.
            wanted = [
                c for c in parquet.schema_arrow.names if c in columns or version < SCHEMA_VERSION
            ]
            table = (
                parquet.read(columns=wanted)
                if wanted
                else pa.table({"_": pa.nulls(parquet.metadata.num_rows)})
            )
        for key, value in parts.items():
            if key in SCHEMAS[dataset].names and key not in present:
                table = table.append_column(
                    key, pa.array([value] * table.num_rows, type=pa.string())
                )
        while version < SCHEMA_VERSION:
            table = UPGRADES[version](table, dataset)
            version += 1
        return _conform(table, dataset, columns, path)

    def read_arrow(self, dataset: str, *, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of ``dataset`` as a pyarrow Table with the current schema (see :meth:`read`)."""
        self._check_dataset(dataset)
        names = SCHEMAS[dataset].names
        if columns is None:
            columns = names
        else:
            columns = list(columns)
            unknown = [c for c in columns if c not in names]
            if unknown:
                raise ValueError(f"unknown {dataset} column(s) {unknown}; available: {names}")
        files = self._files(self._dir(dataset))
        if not files:
            return pa.schema([SCHEMAS[dataset].field(c) for c in columns]).empty_table()
        if len(files) == 1:
            tables = [self._read_file(dataset, files[0][0], files[0][1], columns)]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
                tables = list(
                    pool.map(lambda f: self._read_file(dataset, f[0], f[1], columns), files)
                )
        return pa.concat_tables(tables)

    def read(self, dataset: str, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """All rows of ``dataset`` as a DataFrame: the :data:`SCHEMAS` columns (or ``columns``).

        Files of earlier schema versions are upgraded.  Integer and boolean columns use pandas'
        nullable dtypes; floats hold NaN where the store has null; list columns hold numpy arrays
        (or None); timestamps are ``datetime64[us, UTC]``.  An empty or missing dataset gives an
        empty frame with the same columns.
        """
        return _to_pandas(self.read_arrow(dataset, columns=columns))

    def processed(self, config_hash: str) -> set[str]:
        """The ``sha256`` values that have a ``metrics`` row for ``config_hash``.

        Reads only the ``sha256`` column of that one partition folder.
        """
        check_partition_value(config_hash)
        files = self._files(f"{self._dir('metrics')}/config_hash={config_hash}")
        if not files:
            return set()
        dataset = pads.dataset([f for f, _ in files], format="parquet", filesystem=self._fs)
        column = dataset.to_table(columns=["sha256"]).column("sha256")
        return {value for value in column.to_pylist() if value is not None}

    def summary(self) -> dict[str, Any]:
        """Counts and mean scores, for ``segflow show``.

        Returns ``{"root", "rows": {dataset: n}, "files": {dataset: n}, "images", "configs",
        "runs", "errors", "segmenters": {name: {"images", "with_ground_truth", "fg_iou",
        "fg_dice", "inst_f1", "dsb_score", "mean_entropy", "t_total_ms"}}}``; means skip nulls
        and are None when there is nothing to average.
        """
        files = {name: len(self._files(self._dir(name))) for name in DATASETS}
        score_columns = ["fg_iou", "fg_dice", "inst_f1", "dsb_score", "mean_entropy", "t_total_ms"]
        metrics = self.read(
            "metrics",
            columns=["sha256", "config_hash", "segmenter", "has_ground_truth", *score_columns],
        )
        rows = {"metrics": len(metrics)}
        for name in ("masks", "errors", "runs"):
            rows[name] = self.read_arrow(name, columns=[SCHEMAS[name].names[0]]).num_rows
        segmenters: dict[str, dict[str, Any]] = {}
        for segmenter, group in metrics.groupby("segmenter", sort=True):
            entry: dict[str, Any] = {
                "images": int(group["sha256"].nunique()),
                "with_ground_truth": int(group["has_ground_truth"].fillna(False).sum()),
            }
            for column in score_columns:
                mean = group[column].mean()
                entry[column] = None if pd.isna(mean) else float(mean)
            segmenters[str(segmenter)] = entry
        return {
            "root": self.root,
            "rows": rows,
            "files": files,
            "images": int(metrics["sha256"].nunique()),
            "configs": int(metrics["config_hash"].nunique()),
            "runs": rows["runs"],
            "errors": rows["errors"],
            "segmenters": segmenters,
        }


__all__ = [
    "DATASETS",
    "PARTITION_COLUMN",
    "REQUIRED",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "UPGRADES",
    "Store",
    "check_partition_value",
]

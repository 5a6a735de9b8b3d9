"""Uploaded dataset files → canonical arrays (x, y and optionally x_val, y_val) plus the task they hold.

Pure functions over a file on disk: no HTTP, no database. The API layer streams an upload to a temp file
(enforcing the upload size limit), calls `parse_upload`, stores `write_canonical`'s .npz for the workers
and turns `UploadError` into a 422 whose detail is the error's message, shown to the user as-is.

No pickle from users, ever (a user's pickle runs code on the service): .npz members are read with
allow_pickle=False after their headers are checked, CSV is read with the `csv` module and Parquet with
pyarrow (imported lazily).

Canonical arrays, whatever the format:
- language modelling (integer x and y of equal shape (N, T)): x and y int64 token ids ≥ 0;
- classification (integer y of shape (N,)): x float32, y int64 labels ≥ 0;
- regression (float y of shape (N,) or (N, k)): x float32, y float32 of shape (N, k).
The task itself is read off the arrays by `lrbs.contract.shapes.infer_shape`, the one rule for that.
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from lrbs.contract.shapes import DataShape, infer_shape

FORMATS = ("npz", "csv", "parquet")
EXTENSIONS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
KEYS = ("x", "y", "x_val", "y_val")
DEFAULT_TARGET = "target"
# An .npz may be compressed: the upload size limit does not bound what its arrays unpack to, this does.
DEFAULT_MAX_ARRAY_BYTES = 8 * 2**30

ACCEPTED_FORMATS = (
    "accepted: .npz (numpy arrays x, y and optionally x_val, y_val; no pickled objects), "
    ".csv (a header row, numbers only) or .parquet/.pq (numeric columns)"
)
ACCEPTED_KEYS = "accepted keys: x, y (required), x_val and y_val (optional, both or neither)"
ACCEPTED_DTYPES = "accepted: integer or floating-point numbers"
_CSV_CHUNK_CELLS = 1 << 20  # parsed cells held as Python floats at once: bounds the CSV reader's memory
DEFAULT_MAX_COLUMNS = 100_000


class UploadError(ValueError):
    """What was wrong with the file and what is accepted (shown to the user as-is)."""


@dataclass
class ParsedDataset:
    format: str  # "npz" | "csv" | "parquet"
    arrays: dict[str, np.ndarray]  # canonical: "x", "y", and optionally "x_val", "y_val"
    shape: DataShape  # from lrbs.contract.shapes.infer_shape on the canonical arrays

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: list(a.shape) for k, a in self.arrays.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        return {k: str(a.dtype) for k, a in self.arrays.items()}


def detect_format(filename: str) -> str:
    """The upload's format, by its extension (case-insensitive)."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in EXTENSIONS:
        shown = f"'{suffix}'" if suffix else "no extension"
        raise UploadError(f"cannot read a file with {shown} ({filename!r}); {ACCEPTED_FORMATS}")
    return EXTENSIONS[suffix]


def parse_upload(
    path: Path,
    filename: str,
    *,
    target_column: str | None = None,
    max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
    max_columns: int = DEFAULT_MAX_COLUMNS,
) -> ParsedDataset:
    """Read, check and canonicalise an uploaded file. Raises UploadError saying what is wrong and accepted.

    `target_column` (CSV and Parquet; default "target") names the column holding y; every other column is a
    feature. `max_array_bytes` bounds what the arrays take in memory, read and converted to their canonical
    dtypes (an int8 array becomes int64: 8×), whatever the format; `max_columns` bounds CSV and Parquet tables.
    """
    fmt = detect_format(filename)
    if fmt == "npz":
        if target_column is not None:
            raise UploadError(
                "target_column applies to CSV and Parquet uploads only; an .npz names its arrays "
                f"by key ({ACCEPTED_KEYS})"
            )
        arrays = _read_npz(Path(path), max_array_bytes)
    elif fmt == "csv":
        arrays = _read_csv(Path(path), target_column or DEFAULT_TARGET, max_array_bytes, max_columns)
    else:
        arrays = _read_parquet(Path(path), target_column or DEFAULT_TARGET, max_array_bytes, max_columns)
    _check_canonical_size(arrays, max_array_bytes)
    arrays, shape = canonicalise(arrays)
    return ParsedDataset(format=fmt, arrays=arrays, shape=shape)


def _too_big(what: str, size: int, limit: int) -> UploadError:
    return UploadError(
        f"{what} takes {size} bytes in memory; accepted: at most {limit} bytes of array data "
        "(this service's limit, setting LRBS_MAX_UNPACKED_MB)"
    )


def _check_canonical_size(arrays: dict[str, np.ndarray], limit: int) -> None:
    """Counted after conversion: integers become int64 (8 bytes), everything else float32 (4 bytes)."""
    size = sum(a.size * (8 if a.dtype.kind in "iu" else 4) for a in arrays.values())
    if size > limit:
        raise _too_big("the dataset, converted to float32 features and int64 labels,", size, limit)


def _check_columns(count: int, limit: int) -> None:
    if count > limit:
        raise UploadError(f"the table has {count} columns; accepted: at most {limit} (this service's limit)")


def write_canonical(parsed: ParsedDataset, path: Path) -> None:
    """Write the canonical arrays as an uncompressed .npz at exactly `path` (no extension is added)."""
    for key, a in parsed.arrays.items():
        if a.dtype.hasobject or a.dtype.kind not in "iuf":
            raise ValueError(f"{key} has dtype {a.dtype}: only numeric arrays are written")
    with open(path, "wb") as f:
        np.savez(f, **{k: parsed.arrays[k] for k in KEYS if k in parsed.arrays})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- npz


def _read_npz(path: Path, max_array_bytes: int) -> dict[str, np.ndarray]:
    not_npz = (
        "is not a valid .npz file (a zip archive of .npy arrays, as written by numpy.savez or numpy.savez_compressed)"
    )
    if not zipfile.is_zipfile(path):
        raise UploadError(f"the file {not_npz}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _npz_members(archive)
            total = 0
            for key, name in members.items():
                with archive.open(name) as f:
                    dtype, shape = _npy_header(f, key)
                total += math.prod(shape) * dtype.itemsize
                if total > max_array_bytes:
                    raise UploadError(
                        f"the arrays unpack to more than {max_array_bytes} bytes; accepted: at most "
                        f"{max_array_bytes} bytes of array data (this service's limit)"
                    )
            arrays = {}
            for key, name in members.items():
                with archive.open(name) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    except UploadError:
        raise
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UploadError(f"the file {not_npz}: {exc}") from None
    return arrays


_PICKLE = (
    "the .npz holds pickled objects (an object array), which are not accepted: save numeric arrays only "
    "(integer or floating-point), e.g. np.savez(f, x=x.astype(np.float32), y=y)"
)


def _npz_members(archive: zipfile.ZipFile) -> dict[str, str]:
    """Key → member name, checking the keys."""
    members: dict[str, str] = {}
    for name in archive.namelist():
        if name.endswith("/"):
            continue
        key = name[:-4] if name.endswith(".npy") else name
        if key not in KEYS or not name.endswith(".npy"):
            raise UploadError(f"the .npz holds {name!r}, which is not an accepted array; {ACCEPTED_KEYS}")
        if key in members:
            raise UploadError(f"the .npz holds {key!r} twice; {ACCEPTED_KEYS}")
        members[key] = name
    missing = [k for k in ("x", "y") if k not in members]
    if missing:
        found = ", ".join(members) or "nothing"
        raise UploadError(f"the .npz lacks {' and '.join(missing)} (it holds {found}); {ACCEPTED_KEYS}")
    if ("x_val" in members) != ("y_val" in members):
        have, lack = ("x_val", "y_val") if "x_val" in members else ("y_val", "x_val")
        raise UploadError(f"the .npz holds {have} without {lack}; {ACCEPTED_KEYS}")
    return {k: members[k] for k in KEYS if k in members}


def _npy_header(f: Any, key: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape an .npy member declares, read before any of its data."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:  # 3.0 is only written for structured dtypes with non-latin1 field names
        raise UploadError(f"{key} is a structured array (.npy format {version[0]}.{version[1]}); {ACCEPTED_DTYPES}")
    if dtype.hasobject:
        raise UploadError(_PICKLE)
    _check_dtype(key, dtype)
    return dtype, tuple(shape)


# ------------------------------------------------------------------------------------------------- csv


def _read_csv(path: Path, target: str, max_array_bytes: int, max_columns: int) -> dict[str, np.ndarray]:
    """pyarrow's columnar CSV reader, block by block: memory stays near the size of the arrays it produces.

    Anything it cannot take (a ragged line, text, an empty cell, NaN, bad UTF-8) sends the file to
    `_diagnose_csv`, which reads it line by line to say exactly where and what is wrong."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next((row for row in csv.reader(f) if row), None)
    if header is None or len(header) > max_columns:
        return _diagnose_csv(path, target, max_array_bytes, max_columns)
    columns = [c.strip() for c in header]
    t = _target_index(columns, target)
    options = pacsv.ReadOptions(block_size=max(1 << 20, 64 * len(columns)))
    x_chunks: list[np.ndarray] = []
    y_chunks: list[np.ndarray] = []
    rows = 0
    try:
        for batch in pacsv.open_csv(path, read_options=options):
            if batch.num_columns != len(columns):
                raise pa.ArrowInvalid("column count")
            values = []
            for column in batch.columns:
                if column.null_count or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
                    raise pa.ArrowInvalid("not a number")
                values.append(column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))
            table = np.column_stack(values) if values else np.empty((0, len(columns)))
            if not np.isfinite(table).all():
                raise pa.ArrowInvalid("not finite")
            rows += len(table)
            if rows * len(columns) * 4 > max_array_bytes:
                raise _too_big(f"the CSV's first {rows} rows", rows * len(columns) * 4, max_array_bytes)
            x_chunks.append(np.delete(table, t, axis=1).astype(np.float32))
            y_chunks.append(table[:, t])
    except (pa.ArrowException, UnicodeDecodeError, ValueError) as exc:
        found = _diagnose_csv(path, target, max_array_bytes, max_columns)  # raises, naming line and column
        if found:  # the exact reader took what pyarrow would not (a quirk of inference): use its arrays
            return found
        raise UploadError(f"the CSV file cannot be read ({exc}); {ACCEPTED_FORMATS}") from None
    if not rows:
        return _diagnose_csv(path, target, max_array_bytes, max_columns)
    return {"x": np.concatenate(x_chunks), "y": _target_array(np.concatenate(y_chunks))}


def _diagnose_csv(path: Path, target: str, max_array_bytes: int, max_columns: int) -> dict[str, np.ndarray]:
    """The slow, exact reader: run only when the fast one met a problem, to name its line and column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            while header is not None and not header:  # blank lines before the header
                header = next(reader, None)
            if header is None:
                raise UploadError(
                    "the CSV file is empty; accepted: a header row naming the columns, then one row "
                    "of numbers per sample"
                )
            columns = [c.strip() for c in header]
            _check_columns(len(columns), max_columns)
            t = _target_index(columns, target)
            chunk_rows = max(1, _CSV_CHUNK_CELLS // len(columns))
            chunks: list[np.ndarray] = []
            rows: list[list[float]] = []
            parsed = 0
            for row in reader:
                if not row:
                    continue
                if len(row) != len(columns):
                    raise UploadError(
                        f"line {reader.line_num} has {len(row)} fields but the header has "
                        f"{len(columns)}; accepted: the same number of fields on every row"
                    )
                try:
                    rows.append([float(cell) for cell in row])
                except ValueError:
                    _bad_cell(row, columns, reader.line_num)
                if not all(map(math.isfinite, rows[-1])):
                    _bad_cell(row, columns, reader.line_num)
                if len(rows) == chunk_rows:
                    chunks.append(np.array(rows, dtype=np.float64))
                    parsed += len(rows)
                    rows = []
                    if parsed * len(columns) * 4 > max_array_bytes:
                        raise _too_big(f"the CSV's first {parsed} rows", parsed * len(columns) * 4, max_array_bytes)
            if rows:
                chunks.append(np.array(rows, dtype=np.float64))
    except UnicodeDecodeError as exc:
        raise UploadError(
            f"the CSV file is not UTF-8 text ({exc.reason} at byte {exc.start}); accepted: UTF-8 (or ASCII) text"
        ) from None
    except csv.Error as exc:
        raise UploadError(
            f"the CSV file cannot be read: {exc}; accepted: comma-separated numbers under a header row"
        ) from None
    if not chunks:
        raise UploadError(
            "the CSV file has a header but no data rows; accepted: one row of numbers per sample under the header"
        )
    table = np.concatenate(chunks)
    features = [i for i in range(len(columns)) if i != t]
    return {"x": table[:, features].astype(np.float32), "y": _target_array(table[:, t])}


def _bad_cell(row: list[str], columns: list[str], line: int) -> None:
    for cell, column in zip(row, columns, strict=True):
        try:
            ok = math.isfinite(float(cell))
        except ValueError:
            ok = False
        if not ok:
            what = "an empty cell" if not cell.strip() else f"{cell.strip()[:40]!r}"
            raise UploadError(
                f"line {line}, column {column!r}: {what} is not a finite number; accepted: numbers "
                "in every cell (no missing values, NaN or infinity)"
            )
    raise AssertionError("unreachable: the row parsed")  # pragma: no cover


def _target_index(columns: list[str], target: str) -> int:
    duplicated = sorted(name for name, count in Counter(columns).items() if count > 1)  # linear, even for 40k columns
    if duplicated:
        raise UploadError(f"column names must be unique; repeated: {', '.join(map(repr, duplicated))}")
    if target not in columns:
        listed = ", ".join(map(repr, columns)) or "(none)"
        raise UploadError(
            f"there is no target column {target!r}; the columns are {listed}; "
            "accepted: a column named 'target', or name the column that holds y with target_column"
        )
    if len(columns) < 2:
        raise UploadError(
            f"the only column is the target {target!r}; accepted: at least one feature column besides the target"
        )
    return columns.index(target)


def _target_array(y: np.ndarray) -> np.ndarray:
    """Integral targets are class labels (int64); any other value makes it regression (float32)."""
    if np.all(y == np.floor(y)):
        if np.any(np.abs(y) > 2**62):
            raise UploadError(
                "the target holds integers too large to be class labels; accepted: labels "
                "0, 1, ..., C-1 for classification, or non-integral numbers for regression"
            )
        return y.astype(np.int64)
    return y.astype(np.float32)


# --------------------------------------------------------------------------------------------- parquet


def _read_parquet(path: Path, target: str, max_array_bytes: int, max_columns: int) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata  # rows and columns from the footer, before any data is read
        _check_columns(meta.num_columns, max_columns)
        if meta.num_rows * meta.num_columns * 8 > max_array_bytes:  # a compressed file can unpack to far more
            raise _too_big(
                f"the Parquet file's {meta.num_rows} rows × {meta.num_columns} columns",
                meta.num_rows * meta.num_columns * 8,
                max_array_bytes,
            )
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UploadError(f"the file is not a valid Parquet file ({exc}); {ACCEPTED_FORMATS}") from None
    columns = list(table.column_names)
    t = _target_index(columns, target)
    if table.num_rows == 0:
        raise UploadError("the Parquet file has no rows; accepted: one row per sample")
    numeric = [pa.types.is_integer(col.type) or pa.types.is_floating(col.type) for col in table.columns]
    bad = [f"{name!r} ({col.type})" for name, col, ok in zip(columns, table.columns, numeric, strict=True) if not ok]
    if bad:
        raise UploadError(
            f"non-numeric columns: {', '.join(bad)}; accepted: integer or floating-point columns only "
            "(encode categories as numbers)"
        )
    nulls = [f"{name!r} ({col.null_count})" for name, col in zip(columns, table.columns, strict=True) if col.null_count]
    if nulls:
        raise UploadError(f"columns with missing values (nulls): {', '.join(nulls)}; accepted: a value in every cell")
    values = [np.asarray(col.to_numpy()) for col in table.columns]
    infinite = [
        repr(name)
        for name, v in zip(columns, values, strict=True)
        if v.dtype.kind == "f" and not np.all(np.isfinite(v))
    ]
    if infinite:
        raise UploadError(f"columns with NaN or infinite values: {', '.join(infinite)}; accepted: finite numbers")
    x = np.empty((table.num_rows, len(columns) - 1), dtype=np.float32)
    for j, i in enumerate(i for i in range(len(columns)) if i != t):
        x[:, j] = values[i]
    y = values[t]
    if y.dtype.kind in "iu":
        if y.dtype == np.uint64 and np.any(y > np.iinfo(np.int64).max):
            raise UploadError(
                f"the target {target!r} holds integers too large to be class labels; accepted: labels "
                "0, 1, ..., C-1 for classification, or floating-point targets for regression"
            )
        y = y.astype(np.int64)
    else:
        y = _target_array(y.astype(np.float64))
    return {"x": x, "y": y}


# ------------------------------------------------------------------------------------------ canonicalise


def _check_dtype(key: str, dtype: np.dtype) -> None:
    if dtype.kind not in "iuf" or dtype.names is not None:
        kinds = {
            "b": "boolean",
            "c": "complex",
            "U": "string",
            "S": "bytes",
            "O": "object",
            "M": "datetime",
            "m": "timedelta",
            "V": "structured/void",
        }
        what = kinds.get(dtype.kind, "non-numeric")
        raise UploadError(f"{key} has dtype {dtype} ({what}); {ACCEPTED_DTYPES} (cast booleans to 0/1)")


def canonicalise(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], DataShape]:
    """Check arrays x, y (and x_val, y_val), convert them to the canonical dtypes and read off their task."""
    for key, a in arrays.items():
        _check_dtype(key, a.dtype)
        if a.ndim == 0:
            raise UploadError(f"{key} is a scalar; accepted: one row per sample, shape (N, ...)")
        if 0 in a.shape[1:]:
            raise UploadError(
                f"{key} has shape {list(a.shape)} with an empty dimension; accepted: at least one value per sample"
            )
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y):
        raise UploadError(f"x has {len(x)} samples but y has {len(y)}; accepted: one label or target per sample")
    if len(x) < 2:
        raise UploadError(f"the dataset has {len(x)} sample(s); accepted: at least 2")
    has_val = "x_val" in arrays
    if has_val and len(arrays["x_val"]) != len(arrays["y_val"]):
        raise UploadError(
            f"x_val has {len(arrays['x_val'])} samples but y_val has {len(arrays['y_val'])}; "
            "accepted: one label or target per validation sample"
        )
    if has_val and len(arrays["x_val"]) == 0:
        raise UploadError("x_val and y_val are empty; accepted: at least 1 validation sample, or leave both out")

    x_int, y_int = x.dtype.kind in "iu", y.dtype.kind in "iu"
    lm = x_int and y_int and x.ndim == 2 and x.shape == y.shape
    out: dict[str, np.ndarray] = {}
    for key, a in arrays.items():
        ref = arrays[_train_key(key)]
        if (a.dtype.kind == "f") != (ref.dtype.kind == "f"):
            raise UploadError(
                f"{key} has dtype {a.dtype} but {_train_key(key)} has {ref.dtype}; accepted: the same "
                "kind of numbers (integer or floating-point) in both"
            )
        if key.startswith("x"):
            out[key] = _ints(key, a) if lm else _floats(key, a)
        elif y_int:
            out[key] = _ints(key, a)
        else:
            f = _floats(key, a)
            out[key] = f.reshape(len(f), -1) if f.ndim == 1 else f
    if has_val:
        for key in ("x_val", "y_val"):
            train_key = _train_key(key)  # compared canonical: y of shape (N,) and (N, 1) are one regression target
            train_sample, val_sample = out[train_key].shape[1:], out[key].shape[1:]
            if val_sample != train_sample:
                raise UploadError(
                    f"{key} has samples of shape {list(val_sample)} but {train_key} has {list(train_sample)}; "
                    f"accepted: validation samples shaped like the training ones"
                )

    largest = 0
    if y_int:
        label_keys = ("x", "y", "x_val", "y_val") if lm else ("y", "y_val")
        what = "token ids" if lm else "class labels"
        for key in label_keys:
            if key in out and out[key].size:
                low, high = int(out[key].min()), int(out[key].max())
                if low < 0:
                    raise UploadError(
                        f"{key} holds {what} below 0 (smallest {low}); accepted: {what} 0, 1, ..., "
                        "C-1" + ("" if lm else ", or floating-point y for regression")
                    )
                largest = max(largest, high)
    try:
        shape = infer_shape(tuple(x.shape), x_int, tuple(y.shape), y_int, largest)
    except ValueError as exc:
        raise UploadError(str(exc)) from None
    return out, shape


def _train_key(key: str) -> str:
    return key.removesuffix("_val")


def _floats(key: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise UploadError(f"{key} holds NaN or infinite values; accepted: finite numbers only")
    with np.errstate(over="ignore"):  # overflow to inf is reported below, with the array's name
        f = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(f)):
        raise UploadError(f"{key} holds values beyond the float32 range (±3.4e38); accepted: finite float32 numbers")
    return f


def _ints(key: str, a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise UploadError(f"{key} holds integers beyond the int64 range; accepted: ids and labels below 2**63")
    return np.ascontiguousarray(a, dtype=np.int64)

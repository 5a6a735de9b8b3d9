"""Uploaded files → canonical arrays and the task they hold; bad files → errors a user can act on."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrbs.service.uploads import FORMATS, UploadError, detect_format, parse_upload, write_canonical

rng = np.random.default_rng(0)


def npz(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def text(tmp_path: Path, body: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def parquet(tmp_path: Path, columns: dict[str, list], name: str = "data.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


# ------------------------------------------------------------------------------------------------ formats


def test_formats_are_detected_by_extension_whatever_the_case():
    assert FORMATS == ("npz", "csv", "parquet")
    assert detect_format("train.NPZ") == "npz"
    assert detect_format("dir/train.csv") == "csv"
    assert detect_format("t.Parquet") == "parquet"
    assert detect_format("t.pq") == "parquet"


@pytest.mark.parametrize("filename", ["data.pkl", "data.pt", "data", "data.csv.gz"])
def test_unknown_extension_lists_the_accepted_ones(filename):
    with pytest.raises(UploadError) as err:
        detect_format(filename)
    for ext in (".npz", ".csv", ".parquet"):
        assert ext in str(err.value)


# -------------------------------------------------------------------------------------------------- npz


def test_npz_classification_gets_float32_x_and_int64_labels(tmp_path):
    x = rng.normal(size=(50, 3, 4)).astype(np.float64)
    y = np.arange(50, dtype=np.int32) % 5
    parsed = parse_upload(npz(tmp_path, x=x, y=y), "data.npz")
    assert parsed.format == "npz"
    assert parsed.shape.task == "classification"
    assert parsed.shape.input_shape == (3, 4)
    assert parsed.shape.num_outputs == 5
    assert parsed.shapes == {"x": [50, 3, 4], "y": [50]}
    assert parsed.dtypes == {"x": "float32", "y": "int64"}
    np.testing.assert_allclose(parsed.arrays["x"], x.astype(np.float32))
    np.testing.assert_array_equal(parsed.arrays["y"], y)


def test_npz_classification_counts_classes_in_the_validation_labels_too(tmp_path):
    x, y = rng.normal(size=(20, 4)), np.arange(20) % 3
    x_val, y_val = rng.normal(size=(6, 4)), np.array([0, 1, 2, 3, 4, 0])
    parsed = parse_upload(npz(tmp_path, x=x, y=y, x_val=x_val, y_val=y_val), "d.npz")
    assert parsed.shape.num_outputs == 5
    assert parsed.shapes == {"x": [20, 4], "y": [20], "x_val": [6, 4], "y_val": [6]}
    assert parsed.dtypes == {"x": "float32", "y": "int64", "x_val": "float32", "y_val": "int64"}


def test_npz_regression_targets_become_float32_columns(tmp_path):
    x = rng.normal(size=(30, 8))
    parsed = parse_upload(npz(tmp_path, x=x, y=rng.normal(size=30)), "d.npz")
    assert parsed.shape.task == "regression"
    assert parsed.shape.num_outputs == 1
    assert parsed.shape.input_shape == (8,)
    assert parsed.shapes == {"x": [30, 8], "y": [30, 1]}
    assert parsed.dtypes == {"x": "float32", "y": "float32"}


def test_npz_regression_with_several_targets_and_validation(tmp_path):
    arrays = {
        "x": rng.normal(size=(30, 8)),
        "y": rng.normal(size=(30, 3)).astype(np.float32),
        "x_val": rng.normal(size=(5, 8)),
        "y_val": rng.normal(size=(5, 3)),
    }
    parsed = parse_upload(npz(tmp_path, **arrays), "d.npz")
    assert parsed.shape.task == "regression"
    assert parsed.shape.num_outputs == 3
    assert parsed.shapes == {"x": [30, 8], "y": [30, 3], "x_val": [5, 8], "y_val": [5, 3]}
    assert set(parsed.dtypes.values()) == {"float32"}


def test_npz_token_sequences_are_language_modelling_with_int64_ids(tmp_path):
    x = rng.integers(0, 100, size=(16, 12), dtype=np.int32)
    y = np.roll(x, -1, axis=1)
    y[0, 0] = 120  # the vocabulary covers the largest id in x and y
    parsed = parse_upload(npz(tmp_path, x=x, y=y), "tokens.npz")
    assert parsed.shape.task == "language_modeling"
    assert parsed.shape.input_shape == (12,)
    assert parsed.shape.num_outputs == 121
    assert parsed.dtypes == {"x": "int64", "y": "int64"}
    np.testing.assert_array_equal(parsed.arrays["x"], x)


def test_npz_token_sequences_with_validation_count_its_ids(tmp_path):
    x = rng.integers(0, 50, size=(16, 8))
    x_val = rng.integers(0, 50, size=(4, 8))
    x_val[0, 0] = 63
    parsed = parse_upload(npz(tmp_path, x=x, y=x, x_val=x_val, y_val=x_val), "tokens.npz")
    assert parsed.shape.task == "language_modeling"
    assert parsed.shape.num_outputs == 64
    assert parsed.shapes == {"x": [16, 8], "y": [16, 8], "x_val": [4, 8], "y_val": [4, 8]}
    assert set(parsed.dtypes.values()) == {"int64"}


def test_write_canonical_round_trips_without_pickle(tmp_path):
    x = rng.integers(0, 50, size=(16, 8))
    parsed = parse_upload(npz(tmp_path, x=x, y=x, x_val=x[:3], y_val=x[:3]), "tokens.npz")
    out = tmp_path / "stored-by-sha"  # content-addressed names have no extension: none may be added
    write_canonical(parsed, out)
    assert out.exists()
    with zipfile.ZipFile(out) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}  # uncompressed
    with np.load(out, allow_pickle=False) as loaded:
        assert loaded.files == ["x", "y", "x_val", "y_val"]
        for key, a in parsed.arrays.items():
            assert loaded[key].dtype == a.dtype
            np.testing.assert_array_equal(loaded[key], a)


# ---------------------------------------------------------------------------------------------- npz: bad


def assert_upload_error(path: Path, filename: str, *fragments: str, **kwargs) -> str:
    with pytest.raises(UploadError) as err:
        parse_upload(path, filename, **kwargs)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_pickled_objects_inside_an_npz_are_refused(tmp_path):
    path = npz(tmp_path, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    assert_upload_error(path, "d.npz", "pickled objects", "not accepted", "numeric")


def test_bytes_that_are_not_a_zip_are_not_an_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"\x80\x04\x95definitely a pickle, not a zip")
    assert_upload_error(path, "d.npz", "not a valid .npz")


def test_npz_without_y_says_which_keys_are_accepted(tmp_path):
    message = assert_upload_error(npz(tmp_path, x=rng.normal(size=(4, 2))), "d.npz", "lacks y")
    assert "x, y" in message and "x_val" in message and "y_val" in message


def test_npz_with_an_extra_key_lists_the_accepted_ones(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(4, 2)), y=np.arange(4) % 2, weights=np.ones(4))
    assert_upload_error(path, "d.npz", "'weights.npy'", "accepted keys: x, y", "x_val and y_val")


def test_npz_with_x_val_but_no_y_val(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(4, 2)), y=np.arange(4) % 2, x_val=rng.normal(size=(2, 2)))
    assert_upload_error(path, "d.npz", "x_val without y_val", "both or neither")


def test_x_and_y_of_different_lengths(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(10, 2)), y=np.arange(9) % 2)
    assert_upload_error(path, "d.npz", "x has 10 samples but y has 9")


def test_validation_samples_must_be_shaped_like_the_training_ones(tmp_path):
    path = npz(
        tmp_path,
        x=rng.normal(size=(10, 2)),
        y=np.arange(10) % 2,
        x_val=rng.normal(size=(3, 5)),
        y_val=np.array([0, 1, 0]),
    )
    assert_upload_error(path, "d.npz", "x_val has samples of shape [5] but x has [2]")


def test_validation_arrays_must_hold_the_same_kind_of_numbers(tmp_path):
    path = npz(
        tmp_path,
        x=rng.normal(size=(10, 2)),
        y=np.arange(10) % 2,
        x_val=rng.normal(size=(3, 2)),
        y_val=np.array([0.5, 1.0, 0.0]),
    )
    assert_upload_error(path, "d.npz", "y_val has dtype float64 but y has int64")


def test_nan_in_x_names_the_array(tmp_path):
    x = rng.normal(size=(10, 2))
    x[3, 1] = np.nan
    assert_upload_error(npz(tmp_path, x=x, y=np.arange(10) % 2), "d.npz", "x holds NaN", "finite")


def test_infinity_in_y_val_names_the_array(tmp_path):
    y_val = np.array([0.5, np.inf])
    path = npz(tmp_path, x=rng.normal(size=(10, 2)), y=rng.normal(size=10), x_val=rng.normal(size=(2, 2)), y_val=y_val)
    assert_upload_error(path, "d.npz", "y_val holds NaN or infinite")


def test_negative_class_labels(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(4, 2)), y=np.array([0, 1, -1, 1]))
    assert_upload_error(path, "d.npz", "y holds class labels below 0", "0, 1, ..., C-1")


def test_negative_token_ids(tmp_path):
    x = rng.integers(0, 10, size=(4, 6))
    x[2, 2] = -3
    assert_upload_error(npz(tmp_path, x=x, y=np.abs(x)), "d.npz", "x holds token ids below 0")


def test_a_single_sample_is_not_a_dataset(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(1, 2)), y=np.array([1.0]))
    assert_upload_error(path, "d.npz", "1 sample", "at least 2")


@pytest.mark.parametrize(
    ("y", "dtype"),
    [
        (np.array([True, False, True]), "bool"),
        (np.array([1 + 1j, 2, 3]), "complex128"),
        (np.array(["a", "b", "c"]), "<U1"),
        (np.array(["2024-01-01"] * 3, dtype="datetime64[D]"), "datetime64[D]"),
    ],
)
def test_non_numeric_dtypes_name_the_array_and_dtype(tmp_path, y, dtype):
    assert_upload_error(npz(tmp_path, x=rng.normal(size=(3, 2)), y=y), "d.npz", f"y has dtype {dtype}")


def test_labels_of_the_wrong_shape_report_the_shape_rule(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(4, 2)), y=np.zeros((4, 3), dtype=np.int64))
    assert_upload_error(path, "d.npz", "integer labels y must have shape (N,)")


def test_one_class_is_not_classification(tmp_path):
    path = npz(tmp_path, x=rng.normal(size=(4, 2)), y=np.zeros(4, dtype=np.int64))
    assert_upload_error(path, "d.npz", "at least two classes")


def test_arrays_that_unpack_past_the_limit_are_refused_before_they_are_read(tmp_path):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((1000, 100)), y=np.zeros(1000))
    assert_upload_error(path, "d.npz", "more than 100000 bytes", max_array_bytes=100_000)


# -------------------------------------------------------------------------------------------------- csv


def test_csv_with_integral_targets_is_classification(tmp_path):
    path = text(tmp_path, "a,b,target\n0.5,1,0\n1.5,2,2.0\n-3,4e-2,1\n")
    parsed = parse_upload(path, "data.csv")
    assert parsed.format == "csv"
    assert parsed.shape.task == "classification"
    assert parsed.shape.num_outputs == 3
    assert parsed.shape.input_shape == (2,)
    assert parsed.dtypes == {"x": "float32", "y": "int64"}
    np.testing.assert_allclose(parsed.arrays["x"], [[0.5, 1], [1.5, 2], [-3, 0.04]], rtol=1e-6)
    np.testing.assert_array_equal(parsed.arrays["y"], [0, 2, 1])


def test_csv_with_fractional_targets_is_regression(tmp_path):
    path = text(tmp_path, "target,a\n0.25,1\n3,2\n-1.5,3\n")
    parsed = parse_upload(path, "data.csv")
    assert parsed.shape.task == "regression"
    assert parsed.shape.num_outputs == 1
    assert parsed.shapes == {"x": [3, 1], "y": [3, 1]}
    assert parsed.dtypes == {"x": "float32", "y": "float32"}
    np.testing.assert_allclose(parsed.arrays["y"][:, 0], [0.25, 3, -1.5])


def test_csv_with_a_named_target_column(tmp_path):
    path = text(tmp_path, "label,f1,f2\n1,0.1,0.2\n0,0.3,0.4\n\n")  # a blank line at the end is fine
    parsed = parse_upload(path, "data.csv", target_column="label")
    assert parsed.shape.task == "classification"
    assert parsed.shape.num_outputs == 2
    np.testing.assert_allclose(parsed.arrays["x"], [[0.1, 0.2], [0.3, 0.4]], rtol=1e-6)


def test_csv_without_the_target_column_lists_the_columns(tmp_path):
    path = text(tmp_path, "a,b,label\n1,2,0\n3,4,1\n")
    assert_upload_error(path, "data.csv", "no target column 'target'", "'a', 'b', 'label'", "target_column")


def test_ragged_csv_names_the_line(tmp_path):
    path = text(tmp_path, "a,b,target\n1,2,0\n3,4,1\n5,1\n")
    assert_upload_error(path, "data.csv", "line 4", "2 fields", "header has 3")


def test_non_numeric_csv_cell_names_line_and_column(tmp_path):
    path = text(tmp_path, "a,b,target\n1,2,0\n3,red,1\n")
    assert_upload_error(path, "data.csv", "line 3", "column 'b'", "'red'", "numbers in every cell")


def test_empty_csv_cell_is_a_missing_value(tmp_path):
    path = text(tmp_path, "a,b,target\n1,2,0\n3,,1\n")
    assert_upload_error(path, "data.csv", "line 3", "column 'b'", "empty cell")


def test_nan_in_a_csv_cell_names_line_and_column(tmp_path):
    path = text(tmp_path, "a,b,target\n1,2,0\nnan,1,1\n")
    assert_upload_error(path, "data.csv", "line 3", "column 'a'", "'nan'")


def test_empty_csv_and_header_only_csv(tmp_path):
    assert_upload_error(text(tmp_path, ""), "data.csv", "empty", "header row")
    assert_upload_error(text(tmp_path, "a,target\n"), "data.csv", "no data rows")


def test_csv_with_one_row_is_one_sample(tmp_path):
    assert_upload_error(text(tmp_path, "a,target\n1,0\n"), "data.csv", "1 sample", "at least 2")


def test_csv_with_negative_integral_targets(tmp_path):
    assert_upload_error(text(tmp_path, "a,target\n1,-1\n2,1\n"), "data.csv", "class labels below 0")


# ---------------------------------------------------------------------------------------------- parquet


def test_parquet_with_integer_targets_is_classification(tmp_path):
    path = parquet(tmp_path, {"a": [0.5, 1.5, 2.5, 3.5], "b": [1, 2, 3, 4], "target": [0, 3, 1, 2]})
    parsed = parse_upload(path, "data.parquet")
    assert parsed.format == "parquet"
    assert parsed.shape.task == "classification"
    assert parsed.shape.num_outputs == 4
    assert parsed.shapes == {"x": [4, 2], "y": [4]}
    assert parsed.dtypes == {"x": "float32", "y": "int64"}
    np.testing.assert_allclose(parsed.arrays["x"][:, 1], [1, 2, 3, 4])


def test_parquet_with_integral_float_targets_is_classification(tmp_path):
    path = parquet(tmp_path, {"a": [0.5, 1.5, 2.5], "target": [0.0, 1.0, 1.0]}, name="d.pq")
    parsed = parse_upload(path, "d.pq")
    assert parsed.shape.task == "classification"
    assert parsed.dtypes["y"] == "int64"


def test_parquet_with_fractional_targets_and_a_named_target_is_regression(tmp_path):
    path = parquet(tmp_path, {"price": [1.5, 2.25, 3.0], "rooms": [1, 2, 3], "area": [40.0, 55.5, 80.0]})
    parsed = parse_upload(path, "data.parquet", target_column="price")
    assert parsed.shape.task == "regression"
    assert parsed.shape.input_shape == (2,)
    assert parsed.shapes == {"x": [3, 2], "y": [3, 1]}
    assert parsed.dtypes == {"x": "float32", "y": "float32"}
    np.testing.assert_allclose(parsed.arrays["x"][:, 1], [40.0, 55.5, 80.0])


def test_parquet_with_a_string_column_names_it(tmp_path):
    path = parquet(tmp_path, {"a": [1.0, 2.0], "colour": ["red", "blue"], "target": [0, 1]})
    assert_upload_error(path, "data.parquet", "non-numeric columns", "'colour'", "numeric")


def test_parquet_with_nulls_names_the_column(tmp_path):
    path = parquet(tmp_path, {"a": [1.0, None, 3.0], "b": [1.0, 2.0, 3.0], "target": [0, 1, 1]})
    message = assert_upload_error(path, "data.parquet", "missing values", "'a'")
    assert "'b'" not in message


def test_parquet_without_the_target_column_lists_the_columns(tmp_path):
    path = parquet(tmp_path, {"a": [1.0, 2.0], "y": [0, 1]})
    assert_upload_error(path, "data.parquet", "no target column 'target'", "'a', 'y'")


def test_bytes_that_are_not_parquet(tmp_path):
    path = text(tmp_path, "a,target\n1,0\n", name="d.parquet")
    assert_upload_error(path, "d.parquet", "not a valid Parquet file")


# --- costs bounded (issue: decompression and conversion bombs, quadratic checks) ---------------------------


def test_a_header_of_60k_columns_with_a_repeat_is_checked_in_linear_time(tmp_path):
    names = [f"c{i}" for i in range(60_000)] + ["c7", "target"]
    path = text(tmp_path, ",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")
    with pytest.raises(UploadError, match="repeated: 'c7'"):  # a quadratic check would hit the test timeout
        parse_upload(path, "data.csv")


def test_tables_wider_than_the_column_cap_are_refused(tmp_path):
    path = text(tmp_path, ",".join(f"c{i}" for i in range(11)) + ",target\n" + ",".join(["1"] * 12) + "\n")
    with pytest.raises(UploadError, match="12 columns; accepted: at most 10"):
        parse_upload(path, "data.csv", max_columns=10)
    columns = {f"c{i}": [1.0] for i in range(11)} | {"target": [1]}
    with pytest.raises(UploadError, match="12 columns; accepted: at most 10"):
        parse_upload(parquet(tmp_path, columns), "data.parquet", max_columns=10)


def test_a_compressed_parquet_bomb_is_refused_from_its_metadata(tmp_path):
    rows = 1_000_000
    table = pa.table({"a": np.zeros(rows), "b": np.zeros(rows), "target": np.zeros(rows, dtype=np.int64)})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size < 100_000  # tiny on disk, 24 MB once read
    with pytest.raises(UploadError, match="rows × 3 columns takes 24000000 bytes"):
        parse_upload(path, "bomb.parquet", max_array_bytes=10_000_000)


def test_sizes_are_counted_after_conversion_to_canonical_dtypes(tmp_path):
    x = np.zeros((1000, 100), dtype=np.int8)  # 100 KB as int8, 800 KB as the int64 token ids it becomes
    path = npz(tmp_path, x=x, y=x)
    parse_upload(path, "data.npz", max_array_bytes=1_700_000)
    with pytest.raises(UploadError, match="converted to float32 features and int64 labels"):
        parse_upload(path, "data.npz", max_array_bytes=1_000_000)


def test_a_wide_csv_is_refused_once_its_rows_pass_the_limit(tmp_path):
    header = ",".join(f"c{i}" for i in range(999)) + ",target\n"
    row = ",".join(["0.5"] * 999) + ",1\n"
    path = text(tmp_path, header + row * 3000)
    with pytest.raises(UploadError, match="the CSV's first"):
        parse_upload(path, "data.csv", max_array_bytes=4_000_000)

import json
import os

import pytest

from depthcut.cache import EntryStore, atomic_write_json, fingerprint, read_json
from depthcut.errors import CacheError


def test_entries_persist_and_resume(tmp_path):
    store = EntryStore(tmp_path / "t", {"backend": "eager", "threads": 2})
    store["a"] = {"ms": 1.5}
    again = EntryStore(tmp_path / "t", {"backend": "eager", "threads": 2})
    assert "a" in again and again["a"] == {"ms": 1.5} and "b" not in again
    assert list(again.keys()) == ["a"] and len(again) == 1


def test_foreign_manifest_is_refused(tmp_path):
    EntryStore(tmp_path / "t", {"backend": "eager"})
    with pytest.raises(CacheError, match="backend"):
        EntryStore(tmp_path / "t", {"backend": "onnxruntime"})


def test_corrupted_entry_names_the_file(tmp_path):
    store = EntryStore(tmp_path / "t", {})
    store["k"] = 1
    store.path("k").write_text('{"key": "k", "val')
    with pytest.raises(CacheError, match=store.path("k").name):
        store["k"]


def test_entry_of_another_key_is_refused(tmp_path):
    store = EntryStore(tmp_path / "t", {})
    store["k"] = 1
    os.replace(store.path("k"), store.path("j"))
    with pytest.raises(CacheError, match="does not hold entry"):
        store["j"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert read_json(tmp_path / "x.json") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_fingerprint_is_order_independent_and_sensitive():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_atomic_write_gives_normal_permissions(tmp_path):
    atomic_write_json(tmp_path / "x.json", {})
    assert (tmp_path / "x.json").stat().st_mode & 0o044 == 0o044     # readable by group and others


def test_a_benchmark_result_is_written_as_json_and_markdown_beside_each_other(tmp_path):
    from depthcut.cache import atomic_write_result
    atomic_write_result(tmp_path / "sub" / "x1.5-run", {"b": 1, "a": [2]}, "# report\n")
    assert json.loads((tmp_path / "sub" / "x1.5-run.json").read_text()) == {"a": [2], "b": 1}
    assert (tmp_path / "sub" / "x1.5-run.md").read_text() == "# report\n"

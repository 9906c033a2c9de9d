"""Saving and loading index directories: round trips, corruption detection, atomic saves."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import csr_index.manifest
import csr_index.storage
from csr_index import CorruptIndexError, CSRIndex, FormatVersionError, IndexFormatError, MissingIndexFileError


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def data_file(path: Path, role: str) -> Path:
    """The adapter file, or the codes / vectors file of the first segment."""
    m = manifest_of(path)
    entry = m["adapter"] if role == "adapter" else m["segments"][0]["files"][role]
    return path / entry["name"]


def listed(path: Path) -> set[str]:
    """Every data file the manifest names."""
    m = manifest_of(path)
    names = {m["adapter"]["name"]} | {e["name"] for seg in m["segments"] for e in seg["files"].values()}
    return names | ({m["tombstones"]["name"]} if m.get("tombstones") else set())


def on_disk(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} - {"manifest.json", ".lock"}


def assert_same_results(a: CSRIndex, b: CSRIndex, queries, **kwargs):
    for score in ("code", "asymmetric"):
        Da, Ia = a.search(queries, 10, score=score, **kwargs)
        Db, Ib = b.search(queries, 10, score=score, **kwargs)
        np.testing.assert_array_equal(Ia, Ib)
        np.testing.assert_array_equal(Da, Db)


@pytest.fixture(scope="module")
def saved(filled_index_factory, corpus, tmp_path_factory):
    """A saved index with keys and stored float16 originals (an int8 one: test_int8_originals.py);
    tests copy it before damaging it."""
    index = filled_index_factory(store_vectors=True, vectors_dtype="float16")
    index.reset()
    index.add(corpus, keys=[f"doc{i}" for i in range(len(corpus))])
    path = tmp_path_factory.mktemp("saved") / "index.csr"
    index.save(path)
    return index, path


@pytest.fixture
def saved_copy(saved, tmp_path):
    """A private copy of the saved index directory, free to damage."""
    index, path = saved
    dst = tmp_path / "copy.csr"
    shutil.copytree(path, dst, copy_function=shutil.copyfile)
    return index, dst


# -------------------------------------------------------------------- round trip
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(metric="ip"),
        dict(values_dtype="float16"),
        dict(store_vectors=True),
        dict(store_vectors=True, vectors_dtype="int8"),
    ],
    ids=["cosine", "ip", "float16", "store_vectors", "int8_vectors"],
)
def test_round_trip_gives_identical_results(filled_index_factory, queries, tmp_path, kwargs):
    index = filled_index_factory(**kwargs)
    index.save(tmp_path / "ix")
    loaded = CSRIndex.load(tmp_path / "ix")
    assert repr(loaded) == repr(index)
    assert (loaded.d, loaded.h, loaded.k, loaded.metric, loaded.store_vectors) == (
        index.d, index.h, index.k, index.metric, index.store_vectors
    )
    assert loaded.values_dtype == index.values_dtype and loaded.vectors_dtype == index.vectors_dtype
    assert loaded.config == index.config
    assert loaded.train_stats == index.train_stats
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.codes().indices, index.codes().indices)
    np.testing.assert_array_equal(loaded.codes().values, index.codes().values)
    for name, tensor in index.adapter.state_dict().items():
        assert np.array_equal(loaded.adapter.state_dict()[name].numpy(), tensor.numpy()), name
    assert_same_results(index, loaded, queries)
    if index.store_vectors:
        np.testing.assert_array_equal(loaded.vectors(), index.vectors())
        assert_same_results(index, loaded, queries, rerank=30)


def test_round_trip_keeps_keys_and_stats(saved, queries):
    index, path = saved
    loaded = CSRIndex.load(path)
    _, I = loaded.search(queries, 5)
    np.testing.assert_array_equal(loaded.keys_of(I), index.keys_of(I))
    assert loaded.keys_of([3]).tolist() == ["doc3"]
    assert loaded.stats() == index.stats()


def test_loaded_arrays_are_read_only_views_of_the_files(saved):
    loaded = CSRIndex.load(saved[1])
    segment = loaded._store.snapshot.segments[0]
    for arr in (loaded.codes().indices, loaded.codes().values, loaded.vectors(), segment.ids, segment.norms):
        assert not arr.flags.writeable
        assert not arr.flags.owndata  # a view on the memory-mapped Arrow buffer, not a copy


def test_loaded_int8_originals_are_read_only_views_of_the_files(filled_index_factory, tmp_path):
    filled_index_factory(store_vectors=True).save(tmp_path / "i8")  # int8: the default
    segment = CSRIndex.load(tmp_path / "i8")._store.snapshot.segments[0]
    assert segment.vectors.dtype == np.int8
    for arr in (segment.vectors, segment.scales):
        assert not arr.flags.writeable and not arr.flags.owndata


def test_loaded_index_accepts_more_vectors(saved, corpus, queries, tmp_path):
    index, path = saved
    loaded = CSRIndex.load(path)
    loaded.add(corpus[:10], keys=[f"new{i}" for i in range(10)])
    assert loaded.ntotal == index.ntotal + 10
    assert loaded.keys_of([index.ntotal]).tolist() == ["new0"]
    loaded.save(tmp_path / "bigger")
    assert CSRIndex.load(tmp_path / "bigger").ntotal == index.ntotal + 10


def test_empty_trained_index_round_trips(make_index, queries, tmp_path):
    make_index(store_vectors=True).save(tmp_path / "empty")
    loaded = CSRIndex.load(tmp_path / "empty")
    assert loaded.ntotal == 0 and loaded.is_trained
    D, I = loaded.search(queries, 3)
    assert (I == -1).all()


def test_describe_reads_only_the_manifest(saved):
    index, path = saved
    info = CSRIndex.describe(path)
    assert info["format"] == "csr-index" and info["format_version"] == csr_index.storage.FORMAT_VERSION
    enc = info["encoder"]
    assert (enc["d"], enc["k"], enc["h"], info["ntotal"]) == (index.d, index.k, index.h, index.ntotal)
    assert [set(seg["files"]) for seg in info["segments"]] == [{"codes", "vectors"}]
    assert info["index"] == {"k_doc": index.k_doc, "store_vectors": True, "values_dtype": "float32",
                             "cluster_rows": index.cluster_rows}


def test_directory_layout(saved):
    path = saved[1]
    assert len(on_disk(path)) == 3 and (path / "manifest.json").exists()
    assert listed(path) == on_disk(path)


# --------------------------------------------------------------- missing files
def test_missing_directory(tmp_path):
    with pytest.raises(MissingIndexFileError, match="no index directory"):
        CSRIndex.load(tmp_path / "nowhere")


def test_missing_manifest(tmp_path):
    (tmp_path / "ix").mkdir()
    with pytest.raises(MissingIndexFileError, match="has no manifest.json"):
        CSRIndex.load(tmp_path / "ix")


@pytest.mark.parametrize("role", ["adapter", "codes", "vectors"])
def test_missing_data_file(saved_copy, role):
    _, path = saved_copy
    data_file(path, role).unlink()
    with pytest.raises(MissingIndexFileError, match="is missing"):
        CSRIndex.load(path)


def test_missing_index_file_error_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        CSRIndex.load(tmp_path / "nowhere")


# ---------------------------------------------------------------- corruption
@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("role", ["adapter", "codes", "vectors"])
def test_truncated_file_is_caught_by_its_size(saved_copy, role, verify):
    _, path = saved_copy
    f = data_file(path, role)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CorruptIndexError, match="truncated or altered"):
        CSRIndex.load(path, verify=verify)


@pytest.mark.parametrize("role", ["adapter", "codes", "vectors"])
def test_flipped_byte_is_caught_by_the_checksum(saved_copy, role):
    _, path = saved_copy
    f = data_file(path, role)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="sha256"):
        CSRIndex.load(path)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"], ids=["broken", "empty", "binary"])
def test_manifest_that_is_not_json(saved_copy, text):
    _, path = saved_copy
    (path / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CorruptIndexError, match="not valid JSON"):
        CSRIndex.load(path)


@pytest.mark.parametrize("version", [0, 1, 3, "2", None])
def test_other_format_version(saved_copy, version):
    _, path = saved_copy
    manifest = manifest_of(path)
    manifest["format_version"] = version
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="format version"):
        CSRIndex.load(path)
    with pytest.raises(FormatVersionError):
        CSRIndex.describe(path)


def test_config_fields_of_a_newer_release_name_the_newer_version(saved_copy):
    """An index whose config has a field this release does not know was written by a newer one:
    a FormatVersionError that says so, not a report of corruption."""
    from csr_index import CSREncoder

    _, path = saved_copy
    manifest = manifest_of(path)
    manifest["encoder"]["config"]["a_future_setting"] = 1
    manifest["library_version"] = "9.0.0"
    (path / "manifest.json").write_text(json.dumps(manifest))
    for load in (CSRIndex.load, CSREncoder.load):
        with pytest.raises(FormatVersionError, match=r"newer csr-index \(it records version 9\.0\.0\).*a_future_setting"):
            load(path)


def _set(key, value, section=None):
    def edit(m):
        (m[section] if section else m)[key] = value
    return edit


def _encoder_and_config(key, value):
    def edit(m):
        m["encoder"][key] = m["encoder"]["config"][key] = value
    return edit


def _drop(key):
    def edit(m):
        del m[key]
    return edit


def _file_name(name):
    def edit(m):
        m["segments"][0]["files"]["codes"]["name"] = name
    return edit


@pytest.mark.parametrize(
    "edit, fragment",
    [
        pytest.param(_set("format", "something-else"), "not a csr-index manifest", id="format"),
        pytest.param(lambda m: m.clear(), "not a csr-index manifest", id="empty-object"),
        pytest.param(_set("ntotal", 601), "the manifest says 601", id="ntotal"),
        pytest.param(_set("k", 4, "encoder"), "k=4 conflicts with CSRConfig", id="k-vs-config"),
        pytest.param(_encoder_and_config("k", 4), "incomplete or invalid: k_doc=8 exceeds the maximum of 4", id="k"),
        pytest.param(_set("k_doc", 4, "index"), "codes have shape", id="k_doc"),
        pytest.param(_encoder_and_config("h", 64), "adapter tensors", id="h"),
        pytest.param(_set("d", 16, "encoder"), "adapter tensors", id="d"),
        pytest.param(_set("metric", "l2", "encoder"), "incomplete or invalid", id="metric"),
        pytest.param(lambda m: m["encoder"].pop("config"), "incomplete or invalid", id="no-config"),
        pytest.param(_drop("segments"), "lacks its 'segments'", id="no-segments"),
        pytest.param(_drop("adapter"), "bad file entry", id="no-adapter"),
        pytest.param(_set("values_dtype", "float16", "index"), "expected fixed_size_list<float16>", id="values-dtype"),
        pytest.param(_file_name("../../etc/passwd"), "bad file entry", id="path-traversal"),
        pytest.param(_file_name("manifest.json"), "bad file entry", id="foreign-name"),
        pytest.param(_set("next_id", -1), "next_id must be a non-negative integer", id="next-id"),
        pytest.param(_set("segments", 5), "lacks its 'segments'", id="segments-number"),
        pytest.param(_set("segments", ["x"]), "every segment must be an object", id="segment-string"),
        pytest.param(lambda m: m["segments"][0].update(files=[1]), "every segment must be an object", id="files-list"),
        pytest.param(lambda m: m["index"].pop("k_doc"), "incomplete or invalid: 'k_doc'", id="no-k_doc"),
        pytest.param(_set("values_dtype", "bogus", "index"), "incomplete or invalid", id="values-dtype-bogus"),
        pytest.param(_set("k_doc", "x", "index"), "incomplete or invalid", id="k_doc-string"),
        pytest.param(_set("next_id", "7"), "next_id must be a non-negative integer", id="next-id-type"),
        pytest.param(_set("vectors_dtype", "int8", "index"), "expected fixed_size_list<int8>", id="vectors-dtype"),
        pytest.param(_set("vectors_dtype", "float32", "index"), "incomplete or invalid: vectors_dtype must be",
                     id="vectors-dtype-bogus"),
    ],
)
def test_tampered_manifest_is_corrupt(saved_copy, edit, fragment):
    _, path = saved_copy
    manifest = manifest_of(path)
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match=fragment):
        CSRIndex.load(path)


def test_manifest_that_is_a_list(saved_copy):
    _, path = saved_copy
    (path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CorruptIndexError):
        CSRIndex.load(path)


def test_all_format_errors_share_a_base_class():
    for exc in (CorruptIndexError, FormatVersionError, MissingIndexFileError):
        assert issubclass(exc, IndexFormatError) and issubclass(exc, ValueError)


# ------------------------------------------------------------------ atomicity
def _fail_on_call(n, real):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError("simulated crash (disk full)")
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    "module, target, call",
    [
        pytest.param(csr_index.storage, "_write_table", 1, id="codes"),  # crash while writing the codes
        pytest.param(csr_index.storage, "_write_table", 2, id="vectors"),  # codes written, crash writing the vectors
        pytest.param(csr_index.manifest, "write_bytes", 1, id="manifest"),  # (the adapter file is shared)
        pytest.param(None, "os.replace", 1, id="commit"),  # crash at the commit point
    ],
)
def test_crashed_save_keeps_the_previous_index(filled_index_factory, corpus, queries, tmp_path, monkeypatch,
                                               module, target, call):
    path = tmp_path / "ix"
    old = filled_index_factory(store_vectors=True)
    old.save(path)
    before = sorted(p.name for p in path.iterdir())
    expected = CSRIndex.load(path)

    new = filled_index_factory(store_vectors=True)
    new.reset()
    new.add(corpus[:50])
    with monkeypatch.context() as m:
        if target == "os.replace":
            m.setattr(os, "replace", _fail_on_call(call, os.replace))
        else:
            m.setattr(module, target, _fail_on_call(call, getattr(module, target)))
        with pytest.raises(OSError, match="simulated crash"):
            new.save(path, overwrite=True)  # another index's documents, replaced on purpose

    survivor = CSRIndex.load(path)  # the old manifest and every file it names are intact
    assert survivor.ntotal == len(corpus)
    assert_same_results(expected, survivor, queries)

    new.save(path, overwrite=True)  # a later successful save cleans the orphans of the crashed one
    assert on_disk(path) == listed(path)
    assert not on_disk(path) & set(before) - {data_file(path, "adapter").name}  # the adapter is shared
    assert CSRIndex.load(path).ntotal == 50


def test_crash_on_first_save_leaves_no_loadable_index(index, corpus, tmp_path, monkeypatch):
    index.add(corpus[:20])
    path = tmp_path / "ix"
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _fail_on_call(1, os.replace))
        with pytest.raises(OSError):
            index.save(path)
    with pytest.raises(MissingIndexFileError):
        CSRIndex.load(path)
    index.save(path)  # the half-written directory is ours: saving again is allowed and cleans it
    assert on_disk(path) == listed(path)


def test_saving_into_a_foreign_directory_is_refused(index, corpus, tmp_path):
    index.add(corpus[:10])
    target = tmp_path / "my-documents"
    target.mkdir()
    (target / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a csr-index index; refusing"):
        index.save(target)
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]
    assert (target / "thesis.tex").read_text() == "precious"


def test_saving_into_a_directory_with_a_foreign_manifest_is_refused(index, corpus, tmp_path):
    index.add(corpus[:10])
    target = tmp_path / "webapp"
    target.mkdir()
    (target / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    (target / "index.html").write_text("<html></html>")
    with pytest.raises(FileExistsError):
        index.save(target)
    assert json.loads((target / "manifest.json").read_text()) == {"name": "my web app", "start_url": "/"}


def test_saving_onto_a_file_is_refused(index, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(FileExistsError):
        index.save(f)
    assert f.read_text() == "x"


def test_saving_into_an_empty_directory_works(index, corpus, tmp_path):
    index.add(corpus[:10])
    index.save(tmp_path)  # tmp_path exists and is empty
    assert CSRIndex.load(tmp_path).ntotal == 10


def test_resave_over_itself_after_load_rewrites_nothing(saved_copy, queries):
    index, path = saved_copy
    loaded = CSRIndex.load(path)  # its codes and vectors are memory-mapped from files in path
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir() if p.name in listed(path)}
    loaded.save(path)
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir() if p.name in listed(path)} == before
    assert_same_results(index, loaded, queries, rerank=30)  # the mapped arrays still read fine
    again = CSRIndex.load(path)
    assert_same_results(index, again, queries, rerank=30)


def test_saving_after_a_small_add_writes_only_the_new_segment(saved_copy, corpus, queries):
    index, path = saved_copy
    loaded = CSRIndex.load(path)
    old = {p.name: p.stat().st_mtime_ns for p in path.iterdir() if p.name in listed(path)}
    loaded.add(corpus[:7])
    assert not loaded.vectors().flags.owndata or loaded._store.snapshot.segments[0].vectors.base is not None
    loaded.save(path)
    now = listed(path)
    assert set(old) <= now and len(now - set(old)) == 2  # one new segment: codes + vectors
    assert all((path / name).stat().st_mtime_ns == t for name, t in old.items())
    again = CSRIndex.load(path)
    assert again.ntotal == index.ntotal + 7
    np.testing.assert_array_equal(again.search(queries, 5)[1], loaded.search(queries, 5)[1])


def test_removed_ids_stay_removed_after_save_and_load(saved_copy, queries):
    index, path = saved_copy
    loaded = CSRIndex.load(path)
    _, I = loaded.search(queries, 5)
    gone = np.unique(I[:, 0])
    assert loaded.remove_ids(gone) == len(gone)
    loaded.save(path)
    again = CSRIndex.load(path)
    assert again.ntotal == index.ntotal - len(gone)
    for score in ("code", "asymmetric", "exact"):
        _, I2 = again.search(queries, 20, score=score)
        assert not np.isin(I2, gone).any()
    with pytest.raises(KeyError):
        again.keys_of(gone[:1])


def test_a_second_writer_is_refused_while_one_saves(saved_copy, monkeypatch):
    index, path = saved_copy
    import fcntl

    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process (here: this one) is saving
        with pytest.raises(RuntimeError, match="another process is saving"):
            CSRIndex.load(path).save(path)
    finally:
        os.close(fd)
    CSRIndex.load(path).save(path)  # once it is done, saving works


def test_new_files_are_durable_before_the_manifest_names_them(filled_index_factory, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = csr_index.manifest.fsync, os.replace
    monkeypatch.setattr(csr_index.manifest, "fsync", lambda p: (events.append(("fsync", p.name)), real_fsync(p)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", b.name)), real_replace(a, b)))
    path = tmp_path / "ix"
    filled_index_factory(store_vectors=True).save(path)
    commit = events.index(("replace", "manifest.json"))
    assert ("fsync", path.name) in events[:commit], "the directory must be fsynced before the manifest swap"
    assert events[commit + 1] == ("fsync", path.name)


def test_load_without_verify_still_reads(saved):
    index, path = saved
    loaded = CSRIndex.load(path, verify=False)
    np.testing.assert_array_equal(loaded.ids, index.ids)


# ------------------------------------------------- checks beyond the checksum
def _patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    assert raw.count(old) == 1, "the pattern to patch must be unique in the file"
    path.write_bytes(raw.replace(old, new))


def test_negative_code_value_is_caught_without_verify(saved_copy):
    index, path = saved_copy
    row = index.codes().values[7]
    _patch_bytes(data_file(path, "codes"), row.tobytes(), (-row).tobytes())
    with pytest.raises(CorruptIndexError, match="finite and non-negative"):
        CSRIndex.load(path, verify=False)
    with pytest.raises(CorruptIndexError, match="sha256"):
        CSRIndex.load(path)


def test_latent_index_out_of_range_is_caught_without_verify(saved_copy):
    index, path = saved_copy
    row = index.codes().indices[7]
    bad = row.copy()
    bad[0] = index.h + 5
    _patch_bytes(data_file(path, "codes"), row.tobytes(), bad.tobytes())
    with pytest.raises(CorruptIndexError, match="exceeds h=128"):
        CSRIndex.load(path, verify=False)


def test_duplicate_ids_are_caught_without_verify(saved_copy):
    index, path = saved_copy
    ids = np.asarray(index.ids)
    _patch_bytes(data_file(path, "codes"), ids[:3].tobytes(), ids[[0, 0, 2]].tobytes())
    with pytest.raises(CorruptIndexError, match="ids must be unique"):
        CSRIndex.load(path, verify=False)


def test_wide_code_space_uses_uint32_indices(embeddings, tmp_path, tiny_config):
    # h > 65536 latents no longer fit in uint16
    x = embeddings(200, d=8, seed=4)
    index = CSRIndex(8, k=4, h=70_000, config=tiny_config(steps=3, batch_size=64, k_aux=16))
    index.train(x)
    index.add(x)
    assert index.codes().indices.dtype == np.uint32
    index.save(tmp_path / "wide")
    assert CSRIndex.load(tmp_path / "wide").codes().indices.dtype == np.uint32
    loaded = CSRIndex.load(tmp_path / "wide")
    for score in ("code", "asymmetric"):
        Da, Ia = index.search(x[:5], 3, score=score)
        Db, Ib = loaded.search(x[:5], 3, score=score)
        np.testing.assert_array_equal(Ia, Ib)
        np.testing.assert_array_equal(Da, Db)
    assert (Ia[:, 0] == np.arange(5)).all()


def test_a_manifest_without_next_id_continues_after_the_largest_stored_id(saved_copy, corpus):
    index, path = saved_copy
    manifest = manifest_of(path)
    assert manifest.pop("next_id") == index.ids.max() + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = CSRIndex.load(path)
    loaded.add(corpus[:1])
    assert loaded.ids.max() == index.ids.max() + 1


def test_an_index_saved_before_vectors_dtype_loads_with_float16_originals(saved_copy, queries, tmp_path):
    index, path = saved_copy
    manifest = manifest_of(path)
    manifest["index"].pop("vectors_dtype", None)  # (float16 is not written, so releases before it read the index)
    manifest["index"].pop("cluster_rows", None)  # nor was cluster_rows
    assert set(manifest["index"]) == {"k_doc", "store_vectors", "values_dtype"}
    (path / "manifest.json").write_text(json.dumps(manifest))  # as a save from before the setting
    loaded = CSRIndex.load(path)
    assert loaded.vectors_dtype == np.float16 and loaded.vectors().dtype == np.float16
    assert loaded.cluster_rows is None  # clustering stays off for an index saved before it
    np.testing.assert_array_equal(loaded.vectors(), index.vectors())
    assert_same_results(index, loaded, queries)
    assert_same_results(index, loaded, queries, rerank=30)
    loaded.save(tmp_path / "again")
    assert CSRIndex.load(tmp_path / "again").vectors_dtype == np.float16


def test_a_damaged_adapter_is_rewritten_by_the_next_save(saved_copy, queries):
    index, path = saved_copy
    adapter = path / manifest_of(path)["adapter"]["name"]
    blob = bytearray(adapter.read_bytes())
    blob[-8] ^= 0xFF  # same size, other weights
    adapter.write_bytes(bytes(blob))
    with pytest.raises(CorruptIndexError, match="sha256"):
        CSRIndex.load(path)
    index.save(path, overwrite=True)  # the healthy in-memory index: its adapter must not vouch for the damaged file
    loaded = CSRIndex.load(path)
    for name, value in index.encoder.state().items():
        np.testing.assert_array_equal(loaded.encoder.state()[name], value)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def test_saving_over_an_index_of_another_format_version_is_refused(saved_copy):
    index, path = saved_copy
    manifest = manifest_of(path)
    manifest["format_version"] = csr_index.manifest.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(FormatVersionError, match="refusing to replace it"):
        index.save(path)
    assert sorted(p.name for p in path.iterdir()) == before and manifest_of(path) == manifest


def test_encoder_save_over_an_index_keeps_its_documents(saved_copy):
    """CSREncoder.load(p).save(p) (the README loads encoders from index directories) must not
    replace the index by the adapter alone; overwrite=True does, on purpose."""
    from csr_index import CSREncoder

    index, path = saved_copy
    n = CSRIndex.load(path).ntotal
    assert n > 0
    with pytest.raises(FileExistsError, match=f"{n} documents"):
        CSREncoder.load(path).save(path)
    assert CSRIndex.load(path).ntotal == n
    CSREncoder.load(path).save(path, overwrite=True)
    assert CSRIndex.load(path).ntotal == 0


def test_a_stale_second_save_is_refused_and_the_first_saves_rows_stay(saved_copy, corpus):
    """Two handles load one index and both add; the first save wins, the second is refused with
    StaleIndexError (it would have dropped the first's rows); a reload then sees the first's."""
    from csr_index import StaleIndexError

    _, path = saved_copy
    a, b = CSRIndex.load(path), CSRIndex.load(path)
    n = a.ntotal
    a.add(corpus[:50])
    a.save(path)
    a.add(corpus[50:60])
    a.save(path)  # the same handle saves again: fine
    b.add(corpus[60:100])
    with pytest.raises(StaleIndexError, match="another handle or process"):
        b.save(path)
    assert CSRIndex.load(path).ntotal == n + 60
    fresh = CSRIndex.load(path)  # the way out: load again, re-apply, save
    fresh.add(corpus[60:100])
    fresh.save(path)
    assert CSRIndex.load(path).ntotal == n + 100
    b.save(path.parent / "elsewhere")  # or save the stale handle to another directory
    assert CSRIndex.load(path.parent / "elsewhere").ntotal == n + 40


def test_saving_over_another_indexs_documents_is_refused_unless_overwrite(filled_index_factory, saved_copy, corpus,
                                                                          queries):
    """A handle that did not load from or save to a directory must not silently replace the
    documents another index keeps there: FileExistsError naming the path, the count and the way
    out; overwrite=True replaces them on purpose, and from then on the directory is the handle's."""
    _, path = saved_copy
    n = CSRIndex.load(path).ntotal
    other = filled_index_factory(store_vectors=True)
    other.reset()
    other.add(corpus[:5])
    before = manifest_of(path)
    refusal = rf"{re.escape(str(path))} holds an index of {n} documents.*overwrite=True"
    with pytest.raises(FileExistsError, match=refusal):
        other.save(path)
    assert manifest_of(path) == before and on_disk(path) == listed(path)
    assert CSRIndex.load(path).ntotal == n

    other.save(path, overwrite=True)
    assert CSRIndex.load(path).ntotal == 5
    other.add(corpus[5:7])
    other.save(path)  # saved there now: saving back needs no overwrite, as after a load
    assert_same_results(other, CSRIndex.load(path), queries)


def test_overwrite_replaces_a_directory_saved_since_by_another_handle(saved_copy, corpus):
    """overwrite=True is the explicit way past StaleIndexError too: this handle's rows replace the directory's."""
    from csr_index import StaleIndexError

    _, path = saved_copy
    a, b = CSRIndex.load(path), CSRIndex.load(path)
    a.add(corpus[:3])
    a.save(path)
    with pytest.raises(StaleIndexError):
        b.save(path)
    b.save(path, overwrite=True)
    assert CSRIndex.load(path).ntotal == b.ntotal == a.ntotal - 3


def test_saving_over_a_directory_without_documents_needs_no_overwrite(filled_index_factory, tmp_path):
    """An adapter saved alone (CSREncoder.save) holds no documents: an index may be saved over it."""
    index = filled_index_factory(store_vectors=True)
    index.encoder.save(tmp_path / "ix")
    index.save(tmp_path / "ix")
    assert CSRIndex.load(tmp_path / "ix").ntotal == index.ntotal


# ------------------------------------------------------ the writer lock off POSIX
def _fake_msvcrt(calls: list, held: bool = False) -> types.SimpleNamespace:
    """Windows' msvcrt.locking, recording (mode, bytes); ``held``: another process holds the lock."""
    def locking(fd, mode, nbytes):
        if held and mode == 2:
            raise OSError(36, "Resource deadlock avoided")
        calls.append((mode, nbytes))

    return types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking)


def test_without_fcntl_the_writer_lock_is_msvcrts(index, corpus, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", _fake_msvcrt(calls))
    index.add(corpus[:10])
    index.save(tmp_path / "ix")
    assert calls == [(2, 1), (0, 1)]  # locked, then unlocked
    monkeypatch.setitem(sys.modules, "msvcrt", _fake_msvcrt(calls, held=True))
    with pytest.raises(RuntimeError, match="another process is saving"):
        CSRIndex.load(tmp_path / "ix").save(tmp_path / "ix")
    assert CSRIndex.load(tmp_path / "ix").ntotal == 10


def test_without_any_file_locking_saves_unlocked_and_says_so(index, corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    index.add(corpus[:10])
    with caplog.at_level(logging.WARNING, logger="csr_index"):
        index.save(tmp_path / "ix")
    assert "no file locking on this platform" in caplog.text and "without the writer lock" in caplog.text
    assert CSRIndex.load(tmp_path / "ix").ntotal == 10

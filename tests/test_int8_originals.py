"""int8 originals (``vectors_dtype="int8"``): storage, checks on load, merges, exact scans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from csr_index import CorruptIndexError, CSRIndex
from csr_index.manifest import file_entry
from csr_index.rerank import dequantize_int8, exact_topn, quantize_int8


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def vectors_file(path: Path) -> Path:
    return path / manifest_of(path)["segments"][0]["files"]["vectors"]["name"]


def overlap_at_10(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(x) & set(y)) / 10 for x, y in zip(a, b)])


@pytest.fixture(scope="module")
def saved8(filled_index_factory, tmp_path_factory):
    """A saved int8 index (cosine, the corpus, stored originals)."""
    index = filled_index_factory(store_vectors=True, vectors_dtype="int8")
    path = tmp_path_factory.mktemp("int8") / "index.csr"
    index.save(path)
    return index, path


@pytest.fixture
def copy8(saved8, tmp_path):
    index, path = saved8
    dst = tmp_path / "copy.csr"
    shutil.copytree(path, dst, copy_function=shutil.copyfile)
    return index, dst


# ---------------------------------------------------------------- exact scan
@pytest.mark.parametrize("nq", [1, 40])
def test_exact_scan_of_int8_rows_scores_the_dequantised_vectors(nq, monkeypatch):
    import csr_index.rerank as rr

    monkeypatch.setattr(rr, "SCAN_ELEMENTS", 4096)  # several blocks of rows: each must take its own scales
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32) * rng.uniform(0.1, 10, (3000, 1)).astype(np.float32)
    codes, scales = quantize_int8(x)
    q = rng.standard_normal((nq, 16)).astype(np.float32)
    skip = (rng.random(3000) < 0.1).astype(np.uint8)
    D, rows = exact_topn(q, codes, 7, skip, scales=scales)
    ref = q.astype(np.float64) @ dequantize_int8(codes, scales).astype(np.float64).T
    ref[:, skip == 1] = -np.inf
    best = np.argsort(-ref, axis=1)[:, :7]
    np.testing.assert_array_equal(rows, best)
    np.testing.assert_allclose(D, np.take_along_axis(ref, best, axis=1), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        exact_topn(q, codes, 7)
    with pytest.raises(ValueError, match="scale"):
        exact_topn(q, codes, 7, scales=scales[:-1])


# ----------------------------------------------------------------- the index
def test_int8_index_holds_half_the_bytes_and_close_scores(filled_index_factory, queries):
    f16 = filled_index_factory(store_vectors=True, vectors_dtype="float16")
    i8 = filled_index_factory(store_vectors=True)  # int8: the default
    seg = i8._store.snapshot.segments[0]
    assert seg.vectors.dtype == np.int8 and seg.scales.dtype == np.float32 and seg.scales.shape == (seg.n,)
    s16, s8 = f16.stats(), i8.stats()
    assert s16["memory_vectors_bytes_per_vector"] == 2 * 32 and s8["memory_vectors_bytes_per_vector"] == 32 + 4
    assert (s16["vectors_dtype"], s8["vectors_dtype"]) == ("float16", "int8")
    dense = i8.vectors()
    assert dense.dtype == np.float32
    np.testing.assert_allclose(dense, f16.vectors().astype(np.float32), atol=np.abs(dense).max() / 127)
    for kwargs in (dict(), dict(score="exact")):
        D16, I16 = f16.search(queries, 10, **kwargs)
        D8, I8 = i8.search(queries, 10, **kwargs)
        assert overlap_at_10(I16, I8).mean() >= 0.9, kwargs
        np.testing.assert_allclose(D8[:, 0], D16[:, 0], atol=0.02)
    D, I = i8.search(queries, 10, score="exact")
    ref = queries / np.linalg.norm(queries, axis=1, keepdims=True) @ dense.T  # exact = the dequantised vectors
    np.testing.assert_allclose(D, np.take_along_axis(ref, I, axis=1), rtol=1e-5, atol=1e-5)


def test_int8_originals_take_components_that_overflow_float16(make_index, corpus):
    big = corpus * 1e5  # components beyond float16's 65504
    with pytest.raises(ValueError, match="overflow the float16 originals"):
        make_index(metric="ip", store_vectors=True, vectors_dtype="float16").add(big)
    index = make_index(metric="ip", store_vectors=True, vectors_dtype="int8")
    index.add(big)
    error = np.abs(index.vectors() - big).max(axis=1)
    assert (error <= np.abs(big).max(axis=1) / 254 * 1.001).all()  # half a step of each row's scale


def test_merges_and_compaction_keep_scales_with_their_rows(make_index, corpus, queries):
    index = make_index(store_vectors=True, vectors_dtype="int8").set_engine("inverted")
    for chunk in np.split(corpus, [480, 580]):  # three segments: sizes too far apart to merge
        index.add(chunk)
    gone = np.arange(0, 600, 7)
    index.remove_ids(gone)
    assert len(index._store.snapshot.segments) == 3
    ids, dense = index.ids, index.vectors()
    before = [index.search(queries, 10, **kw) for kw in (dict(), dict(score="exact"))]
    index.compact()
    seg = index._store.snapshot.segments[0]
    assert len(index._store.snapshot.segments) == 1 and seg.scales.shape == (seg.n,) == (600 - len(gone),)
    np.testing.assert_array_equal(index.ids, ids)
    np.testing.assert_array_equal(index.vectors(), dense)
    for (D0, I0), kw in zip(before, (dict(), dict(score="exact"))):
        D1, I1 = index.search(queries, 10, **kw)
        np.testing.assert_array_equal(I1, I0)
        np.testing.assert_allclose(D1, D0, rtol=1e-6, atol=1e-6)
        assert not np.isin(I1, gone).any()
    # each row still scales back to (about) its own original
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    np.testing.assert_allclose(index.vectors(), unit[ids], atol=np.abs(unit).max() / 127)


def test_constructor_rejects_an_unknown_vectors_dtype():
    with pytest.raises(ValueError, match="vectors_dtype must be one of"):
        CSRIndex(8, k=2, vectors_dtype="float32")


# ---------------------------------------------------------------- on disk
def test_int8_originals_and_scales_are_memory_mapped(saved8, queries):
    index, path = saved8
    table = pa.ipc.open_file(pa.memory_map(str(vectors_file(path)))).read_all()
    assert table.schema.field("vector").type == pa.list_(pa.int8(), 32)
    assert table.schema.field("scale").type == pa.float32()
    assert manifest_of(path)["index"]["vectors_dtype"] == "int8"
    loaded = CSRIndex.load(path)
    seg = loaded._store.snapshot.segments[0]
    for arr in (seg.vectors, seg.scales):
        assert not arr.flags.writeable and not arr.flags.owndata
    assert loaded.vectors_dtype == np.int8 and loaded.stats() == index.stats()
    for score in ("asymmetric", "code", "exact"):
        Da, Ia = index.search(queries, 10, score=score)
        Db, Ib = loaded.search(queries, 10, score=score)
        np.testing.assert_array_equal(Ia, Ib)
        np.testing.assert_array_equal(Da, Db)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_a_bad_scale_is_caught_without_verify(copy8, bad):
    index, path = copy8
    scales = index._store.snapshot.segments[0].scales
    target = vectors_file(path)
    raw = target.read_bytes()
    window = scales[5:9].tobytes()
    assert raw.count(window) == 1
    damaged = scales[5:9].copy()
    damaged[2] = bad
    target.write_bytes(raw.replace(window, damaged.tobytes()))
    with pytest.raises(CorruptIndexError, match="vector scales must be .* finite non-negative") as err:
        CSRIndex.load(path, verify=False)
    assert str(path) in str(err.value)
    with pytest.raises(CorruptIndexError, match="sha256"):
        CSRIndex.load(path)


def _rewrite_vectors(path: Path, table: pa.Table) -> None:
    """Replace the first segment's vectors file by ``table``, its manifest entry updated to match."""
    target = vectors_file(path)
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    manifest = manifest_of(path)
    manifest["segments"][0]["files"]["vectors"] = file_entry(target)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.drop_columns(["scale"]), "need a float32 'scale' column"),
    (lambda t: t.set_column(1, "scale", t.column("scale").cast(pa.float64())), "need a float32 'scale' column"),
    (lambda t: t.slice(0, t.num_rows - 1), "vectors have shape"),
], ids=["no-scale", "float64-scale", "short"])
def test_a_malformed_vectors_table_is_corrupt(copy8, change, fragment):
    _, path = copy8
    table = pa.ipc.open_file(pa.BufferReader(vectors_file(path).read_bytes())).read_all()  # not a map of it
    _rewrite_vectors(path, change(table))
    with pytest.raises(CorruptIndexError, match=fragment) as err:
        CSRIndex.load(path)
    assert str(path) in str(err.value)


def test_int8_vectors_under_a_float16_setting_are_corrupt(copy8):
    _, path = copy8
    manifest = manifest_of(path)
    manifest["index"]["vectors_dtype"] = "float16"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="expected fixed_size_list<float16>"):
        CSRIndex.load(path)

"""SparseCodes, and the codes an index produces: shapes, dtypes, invariants, conversions."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from csr_index import CSRIndex, SparseCodes
from csr_index.codes import index_dtype


def small_codes() -> SparseCodes:
    # two codes in R^6 with k=3 slots each; the second has a zero slot (cut by ReLU)
    return SparseCodes(
        indices=np.array([[4, 0, 2], [1, 5, 3]], dtype=np.uint16),
        values=np.array([[3.0, 2.0, 1.0], [4.0, 0.5, 0.0]], dtype=np.float32),
        h=6,
    )


# ------------------------------------------------------------------ SparseCodes
def test_to_dense():
    dense = small_codes().to_dense()
    np.testing.assert_array_equal(dense, [[2, 0, 1, 0, 3, 0], [0, 4, 0, 0, 0, 0.5]])
    assert dense.dtype == np.float32


def test_to_scipy_drops_zero_slots():
    codes = small_codes()
    mat = codes.to_scipy()
    assert mat.shape == (2, 6) and mat.nnz == 5
    np.testing.assert_array_equal(mat.toarray(), codes.to_dense())
    assert mat.has_sorted_indices


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_to_torch_matches_dense():
    import torch

    t = small_codes().to_torch()
    assert t.layout == torch.sparse_csr
    np.testing.assert_array_equal(t.to_dense().numpy(), small_codes().to_dense())


def test_shape_properties():
    codes = small_codes()
    assert (codes.n, codes.k, codes.h, len(codes)) == (2, 3, 6, 2)
    assert "n=2, k=3, h=6" in repr(codes)
    np.testing.assert_array_equal(codes.nnz_per_row(), [3, 2])


def test_truncate_keeps_the_largest_entries():
    codes = small_codes()
    top1 = codes.truncate(1)
    np.testing.assert_array_equal(top1.to_dense(), [[0, 0, 0, 0, 3, 0], [0, 4, 0, 0, 0, 0]])
    assert codes.truncate(3) is codes and codes.truncate(10) is codes


def test_norms_and_normalized():
    codes = small_codes()
    np.testing.assert_allclose(codes.norms(), [np.sqrt(14), np.sqrt(16.25)], rtol=1e-6)
    unit = codes.normalized()
    np.testing.assert_allclose(unit.norms(), [1, 1], rtol=1e-6)
    np.testing.assert_array_equal(unit.indices, codes.indices)


def test_normalized_leaves_zero_codes_zero():
    zero = SparseCodes(np.zeros((1, 2), np.uint16), np.zeros((1, 2), np.float16), h=4)
    out = zero.normalized()
    assert out.values.dtype == np.float32
    np.testing.assert_array_equal(out.values, 0)


def test_concat():
    codes = small_codes()
    both = SparseCodes.concat([codes, codes.truncate(3)])
    assert both.n == 4
    np.testing.assert_array_equal(both.to_dense()[2:], codes.to_dense())
    assert SparseCodes.concat([codes]) is codes
    with pytest.raises(ValueError, match="nothing to concatenate"):
        SparseCodes.concat([])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="must be equal 2-D shapes"):
        SparseCodes(np.zeros((2, 3), np.uint16), np.zeros((2, 4), np.float32), h=8)
    with pytest.raises(ValueError, match="must be equal 2-D shapes"):
        SparseCodes(np.zeros(3, np.uint16), np.zeros(3, np.float32), h=8)


@pytest.mark.parametrize("h, dtype", [(1, np.uint16), (65536, np.uint16), (65537, np.uint32), (1 << 20, np.uint32)])
def test_index_dtype(h, dtype):
    assert index_dtype(h) == np.dtype(dtype)


# ----------------------------------------------------------- codes of an index
def test_encode_returns_k_sparse_non_negative_sorted_codes(index, corpus):
    codes = index.encode(corpus)
    assert isinstance(codes, SparseCodes)
    assert codes.indices.shape == codes.values.shape == (len(corpus), index.k)
    assert codes.h == index.h
    assert codes.indices.dtype == np.uint16 and codes.values.dtype == np.float32
    assert (codes.values >= 0).all()
    assert (np.diff(codes.values, axis=1) <= 0).all(), "each row sorted by descending value"
    assert (codes.indices < index.h).all()
    assert all(len(set(row)) == index.k for row in codes.indices.tolist()), "distinct latents per row"
    assert (codes.nnz_per_row() > 0).all()


@pytest.mark.parametrize("k", [1, 3, 8])
def test_encode_with_smaller_k_is_a_prefix_of_the_full_code_without_refit(index, corpus, monkeypatch, k):
    monkeypatch.setattr(index.config, "refit", False)
    full = index.encode(corpus[:50])
    part = index.encode(corpus[:50], k=k)
    assert part.k == k
    np.testing.assert_array_equal(part.indices, full.truncate(k).indices)
    np.testing.assert_array_equal(part.values, full.truncate(k).values)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_encode_with_smaller_k_uses_a_subset_of_the_latents(index, corpus, k):
    full = index.encode(corpus[:50])
    part = index.encode(corpus[:50], k=k)
    assert part.k == k
    for small, large in zip(part.indices.tolist(), full.indices.tolist()):
        assert set(small) <= set(large)


def test_encode_is_deterministic_and_batch_independent(index, corpus):
    whole = index.encode(corpus)
    rows = index.encode(corpus[17:18])
    np.testing.assert_array_equal(rows.indices, whole.indices[17:18])
    np.testing.assert_allclose(rows.values, whole.values[17:18], rtol=1e-5, atol=1e-6)


def test_a_few_rows_encode_as_in_a_batch(index, corpus):
    """Up to FEW_ROWS rows take the numpy + compiled path (no torch); larger batches the torch
    product: same supports, values and reconstruction norms for every row."""
    from csr_index.encoding import FEW_ROWS

    enc = index.encoder
    xs = enc.prepare(corpus[:64])
    assert len(xs) > FEW_ROWS
    whole, whole_norms = enc.encode_prepared(xs, index.k)
    for s in range(0, 64, 8):
        part, norms = enc.encode_prepared(xs[s : s + 8], index.k)
        np.testing.assert_array_equal(part.indices, whole.indices[s : s + 8])
        np.testing.assert_allclose(part.values, whole.values[s : s + 8], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(norms, whole_norms[s : s + 8], rtol=1e-5, atol=1e-5)


def test_decode_is_codes_times_w_plus_pre_bias(index, corpus):
    codes = index.encode(corpus[:40])
    W = index.adapter.W.detach().numpy()
    b = index.adapter.pre_bias.detach().numpy()
    expected = codes.to_dense() @ W + b
    np.testing.assert_allclose(index.decode(codes), expected, rtol=1e-4, atol=1e-5)


def test_encode_is_relu_of_top_k_preactivations_without_refit(index, corpus, monkeypatch):
    monkeypatch.setattr(index.config, "refit", False)
    x = corpus[:40] / np.linalg.norm(corpus[:40], axis=1, keepdims=True)  # cosine index normalises
    W = index.adapter.W.detach().numpy()
    b = index.adapter.pre_bias.detach().numpy()
    lb = index.adapter.latent_bias.detach().numpy()
    pre = (x - b) @ W.T + lb
    top = np.argsort(-pre, axis=1)[:, : index.k]
    expected = np.zeros_like(pre)
    np.put_along_axis(expected, top, np.maximum(np.take_along_axis(pre, top, axis=1), 0), axis=1)
    np.testing.assert_allclose(index.encode(corpus[:40]).to_dense(), expected, rtol=1e-4, atol=1e-5)


def test_refit_keeps_the_encoder_support_and_lowers_reconstruction_error(index, corpus, monkeypatch):
    x = corpus[:60] / np.linalg.norm(corpus[:60], axis=1, keepdims=True)
    refit = index.encode(x)
    monkeypatch.setattr(index.config, "refit", False)
    plain = index.encode(x)
    for a, b in zip(refit.indices.tolist(), plain.indices.tolist()):
        assert set(a) == set(b)
    err_refit = np.linalg.norm(index.decode(refit) - x, axis=1)
    err_plain = np.linalg.norm(index.decode(plain) - x, axis=1)
    assert (err_refit <= err_plain + 1e-4).all()
    assert err_refit.mean() < err_plain.mean()


def test_cosine_index_encodes_direction_only(index, corpus):
    a = index.encode(corpus[:10])
    b = index.encode(3.5 * corpus[:10])
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)


def test_reconstruct_codes_returns_stored_codes(make_index, corpus):
    index = make_index(values_dtype="float16")
    ids = 100 + 3 * np.arange(len(corpus))
    index.add_with_ids(corpus, ids)
    got = index.reconstruct_codes(ids[[5, 0, 42]])
    expected = index.encode(corpus[[5, 0, 42]])
    assert got.values.dtype == np.float16
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.values, expected.values.astype(np.float16))


def test_codes_are_in_the_order_of_ids(index, corpus):
    index.add_with_ids(corpus[:5], [50, 40, 30, 20, 10])
    index.add_with_ids(corpus[5:8], [7, 8, 9])
    np.testing.assert_array_equal(index.ids, [50, 40, 30, 20, 10, 7, 8, 9])
    np.testing.assert_array_equal(index.codes().indices, index.encode(corpus[:8]).indices)


def test_ids_are_a_copy(filled_index):
    ids = filled_index.ids
    ids[0] = 5
    assert filled_index.ids[0] == 0


def test_vectors_are_the_float16_prepared_originals(make_index, corpus):
    index = make_index(store_vectors=True, vectors_dtype="float16")
    index.add(corpus)
    vecs = index.vectors()
    assert vecs.dtype == np.float16 and vecs.shape == corpus.shape
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs.astype(np.float32), unit, atol=1e-3)


def test_vectors_needs_store_vectors(filled_index):
    with pytest.raises(ValueError, match="store_vectors=False"):
        filled_index.vectors()


def test_stats(make_index, corpus):
    index = make_index(values_dtype="float16", store_vectors=True)
    empty = index.stats()
    assert empty["ntotal"] == 0 and "mean_nonzeros_per_code" not in empty
    index.add(corpus)
    s = index.stats()
    assert s["ntotal"] == len(corpus) and s["is_trained"]
    assert s["code_bytes_per_vector"] == index.k * (2 + 2)  # uint16 index + float16 value
    nnz = int((index.codes().values != 0).sum())
    # the default engine's posting lists (this segment is below full_scan_below: no list is cut, and
    # it keeps the full lists for its exact scan): int32 doc + float16 value per non-zero, int64
    # offsets; the shortlist's compact copy: uint16 doc + uint8 level, int64 offsets, a float32
    # scale per list; each list's one run (h, 2) int32 (an unclustered segment is one cluster);
    # its forward index views the codes
    postings = (6 * nnz + 8 * (index.h + 1) + 3 * nnz + 8 * (index.h + 1) + 4 * index.h + 8 * index.h) / len(corpus)
    # codes, id, norm, int8 originals + their float32 scale (the default vectors_dtype), postings
    assert s["memory_bytes_per_vector"] == pytest.approx(index.k * 4 + 8 + 4 + index.d + 4 + postings, abs=0.1)
    assert s["memory_postings_bytes_per_vector"] == pytest.approx(postings, abs=0.1)
    engine = index._store.snapshot.segments[0].engine(index._engine_spec)
    assert s["memory_postings_bytes_per_vector"] == pytest.approx(engine.nbytes / len(corpus), abs=0.1)
    index.search(corpus[:2])  # searches with the engine stats() built
    assert index._store.snapshot.segments[0].engine(index._engine_spec) is engine
    assert index.stats() == s
    index.set_engine("inverted", values="float32")  # another engine: its own arrays are counted
    copied = 4 * index.k * len(corpus)  # its forward index holds a float32 copy of the float16 values
    exact = (8 * nnz + 8 * (index.h + 1) + copied) / len(corpus)
    assert index.stats()["memory_postings_bytes_per_vector"] == pytest.approx(exact, abs=0.1)
    assert s["dense_float32_bytes_per_vector"] == 4 * index.d
    assert 0 < s["mean_nonzeros_per_code"] <= index.k
    assert 0 <= s["latents_unused_by_stored_codes"] < index.h
    assert 0 < s["busiest_latent_doc_fraction"] <= 1
    assert s["train_steps"] == 30 and "train_fvu" in s


def test_keys_travel_with_their_vectors(index, corpus):
    index.add(corpus[:3], keys=["a", "b", "c"])
    index.add(corpus[3:5])  # no keys for these
    index.add(corpus[5:6], keys=[42])  # keys are stored as strings
    assert index.keys_of(np.arange(6)).tolist() == ["a", "b", "c", None, None, "42"]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float16_overflow_is_refused_or_handled(make_index, corpus, tmp_path):
    index = make_index(metric="ip", values_dtype="float16")
    huge = corpus[:5] * 1e5
    try:
        index.add(huge)
    except ValueError:
        assert index.ntotal == 0  # refused up front: fine
        return
    # accepted: then the vectors must be findable and the index must survive a round trip
    assert np.isfinite(index.codes().values.astype(np.float32)).all()
    _, I = index.search(huge, 1, score="code")
    assert (I[:, 0] >= 0).all()
    index.save(tmp_path / "ix")
    assert CSRIndex.load(tmp_path / "ix").ntotal == 5


def test_originals_that_overflow_float16_are_refused(make_index, corpus, tmp_path):
    index = make_index(metric="ip", values_dtype="float32", store_vectors=True, vectors_dtype="float16")
    index.add(corpus[:5])
    with pytest.raises(ValueError, match="overflow the float16 originals"):
        index.add(corpus[5:10] * 1e5)
    assert index.ntotal == 5 and np.isfinite(index.vectors().astype(np.float32)).all()


@pytest.mark.parametrize("refit", [True, False])
def test_compiled_encoding_equals_the_torch_reference(filled_index, corpus, refit):
    """The CPU kernel (csr_index.sparsify) and the torch path (GPUs) give the same codes and norms."""
    enc = filled_index.encoder
    xs = enc.prepare(corpus)
    codes, norms = enc.encode_prepared(xs, enc.k, refit=refit)
    with torch.inference_mode():
        pre = enc.adapter.preactivations(torch.from_numpy(xs))
        values, indices, ref_norms = enc._encode_torch(enc.adapter, pre, enc.k, refit, enc._gram_tables())
    assert all(set(a) == set(b) for a, b in zip(codes.indices.tolist(), indices.tolist()))
    np.testing.assert_allclose(np.sort(codes.values, 1), np.sort(values, 1), atol=1e-5)
    assert (np.diff(codes.values, axis=1) <= 0).all(), "slots sorted by descending value"
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norms, np.linalg.norm(enc.decode(codes), axis=1), rtol=1e-4, atol=1e-5)

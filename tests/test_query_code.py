"""csr_index.query_code: one query's weighed code in one compiled call equals the general path."""

from __future__ import annotations

import numpy as np
import pytest

from csr_index.integrations.qdrant.validation import sparse_rows
from csr_index.query_code import query_row


@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("k", [8, 3])
def test_query_row_equals_query_code_vectors(make_index, queries, metric, k):
    enc = make_index(metric=metric).encoder
    assert enc.config.refit  # the path under test solves the values too
    for i in range(len(queries)):
        x = np.array(queries[i : i + 1])
        prepared, indices, values = query_row(enc, x, k)
        codes = enc.query_code_vectors(x, k)
        ref_indices, ref_values = sparse_rows(codes.indices, codes.values)[0]
        assert indices == ref_indices  # the same support, ascending
        np.testing.assert_allclose(values, ref_values, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(prepared, enc.prepare(x, "queries"), rtol=1e-6, atol=1e-7)
        if metric == "cosine":
            assert abs(np.linalg.norm(values) - 1) < 1e-5
        else:  # raw inner product: the query is sent as it is
            np.testing.assert_array_equal(prepared, x)


def test_query_row_leaves_other_inputs_to_the_general_path(index, queries):
    enc = index.encoder
    assert query_row(enc, queries[:2], enc.k) is None  # two queries
    assert query_row(enc, queries[:1].astype(np.float64), enc.k) is None
    assert query_row(enc, queries[0].tolist(), enc.k) is None


def test_wide_adapters_take_the_torch_path(index, queries, monkeypatch):
    """Above GRAM_MAX_H there are no compiled tables: ``cpu_tables`` is None, ``query_row`` leaves
    the query to the general path, and encoding still gives the same codes (torch's path)."""
    import copy

    import csr_index.encoding as encoding_module

    enc = index.encoder
    x = np.array(queries[:3])
    ref = enc.encode(x)
    assert enc.cpu_tables() is not None
    wide = copy.deepcopy(enc)  # copies drop the cached tables
    monkeypatch.setattr(encoding_module, "GRAM_MAX_H", enc.h - 1)
    assert wide.cpu_tables() is None
    assert query_row(wide, x[:1], wide.k) is None
    got = wide.encode(x)
    np.testing.assert_array_equal(np.sort(got.indices, axis=1), np.sort(ref.indices, axis=1))
    np.testing.assert_allclose(np.sort(got.values, axis=1), np.sort(ref.values, axis=1), rtol=1e-4, atol=1e-5)


def test_query_row_rejects_bad_vectors_like_prepare(index, queries):
    enc = index.encoder
    x = np.array(queries[:1])
    x[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        query_row(enc, x, enc.k)
    with pytest.raises(ValueError, match="all-zero"):
        query_row(enc, np.zeros((1, enc.d), dtype=np.float32), enc.k)

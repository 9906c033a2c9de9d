"""Bad input is refused early, with a specific exception type and a message that says what is wrong."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from csr_index import CSRConfig, CSRIndex, NotTrainedError
from csr_index.io import read_embeddings
from csr_index.validation import as_ids, as_matrix, check_positive

D = 32


# ---------------------------------------------------------------- the constructor
@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (dict(k=0), ValueError, "k must be positive"),
        (dict(k=-3), ValueError, "k must be positive"),
        (dict(k=129, h=128), ValueError, "k=129 exceeds the maximum of 128"),
        (dict(k=4 * D + 1), ValueError, f"exceeds the maximum of {4 * D}"),  # h defaults to 4 * d
        (dict(k=2.5), TypeError, "k must be an integer"),
        (dict(k=True), TypeError, "k must be an integer"),
        (dict(h=0), ValueError, "h must be positive"),
        (dict(metric="l2"), ValueError, "metric must be one of"),
        (dict(values_dtype="int8"), ValueError, "values_dtype must be"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        CSRIndex(D, **kwargs)


@pytest.mark.parametrize("d, exc", [(0, ValueError), (-1, ValueError), (32.0, TypeError)])
def test_constructor_rejects_bad_dimension(d, exc):
    with pytest.raises(exc, match="d must be"):
        CSRIndex(d)


def test_defaults():
    index = CSRIndex(D)
    assert (index.d, index.h, index.k, index.metric) == (D, 4 * D, 32, "cosine")
    assert not index.is_trained and index.ntotal == 0 and len(index) == 0


def test_config_k_and_h_conflicting_with_arguments_are_refused():
    with pytest.raises(ValueError, match="k=4 conflicts with CSRConfig\\(k=99\\)"):
        CSRIndex(D, k=4, h=64, config=CSRConfig(k=99, steps=5))
    with pytest.raises(ValueError, match="h=64 conflicts with CSRConfig\\(h=999\\)"):
        CSRIndex(D, k=4, h=64, config=CSRConfig(h=999, steps=5))
    index = CSRIndex(D, config=CSRConfig(k=6, h=48, steps=5))  # given once, in the config: used
    assert (index.k, index.h, index.config.k, index.config.h, index.config.steps) == (6, 48, 6, 48, 5)
    same = CSRIndex(D, k=6, config=CSRConfig(k=6))  # the same value twice is no conflict
    assert same.k == 6 and same.h == 4 * D


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown CSRConfig fields"):
        CSRConfig.from_dict({"k": 8, "learning_rate": 0.1})


# ------------------------------------------------------------- before training
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda ix, x: ix.search(x, 5), id="search"),
        pytest.param(lambda ix, x: ix.add(x), id="add"),
        pytest.param(lambda ix, x: ix.add_with_ids(x, np.arange(len(x))), id="add_with_ids"),
        pytest.param(lambda ix, x: ix.encode(x), id="encode"),
        pytest.param(lambda ix, x: ix.save("never-written"), id="save"),
    ],
)
def test_untrained_index_raises_not_trained(call, queries):
    index = CSRIndex(D, k=8)
    with pytest.raises(NotTrainedError, match="not trained yet"):
        call(index, queries)
    assert index.ntotal == 0


def test_not_trained_error_is_a_value_error(queries):
    # callers that catch ValueError (or AttributeError, as with sklearn) still work
    with pytest.raises(ValueError):
        CSRIndex(D, k=8).search(queries, 5)
    assert issubclass(NotTrainedError, AttributeError)


def test_decode_before_train(index, queries):
    codes = index.encode(queries)
    with pytest.raises(NotTrainedError):
        CSRIndex(D, k=8).decode(codes)


# ----------------------------------------------------------------- array input
def _bad_arrays():
    good = np.ones((3, D), dtype=np.float32)
    nan = good.copy()
    nan[1, 5] = np.nan
    inf = good.copy()
    inf[2, 0] = -np.inf
    return [
        pytest.param(np.ones((3, D + 1), np.float32), ValueError, f"has dimension {D + 1}, expected {D}", id="wrong-dim"),
        pytest.param(nan, ValueError, r"NaN or inf values \(first at row 1, column 5\)", id="nan"),
        pytest.param(inf, ValueError, r"NaN or inf values \(first at row 2, column 0\)", id="inf"),
        pytest.param(np.empty((0, D), np.float32), ValueError, "empty batch", id="empty"),
        pytest.param(np.ones(D, np.float32), ValueError, r"got 1-D .*reshape\(1, -1\)", id="1-D"),
        pytest.param(np.ones((2, 3, D), np.float32), ValueError, "Expected a 2-D array.*got 3-D", id="3-D"),
        pytest.param(np.full((2, D), "a"), TypeError, "must hold real numbers", id="strings"),
        pytest.param([[1.0, 2.0], [3.0]], TypeError, "2-D array of floats", id="ragged"),
    ]


@pytest.mark.parametrize("x, exc, fragment", _bad_arrays())
@pytest.mark.parametrize(
    "method",
    [
        pytest.param(lambda ix, x: ix.search(x, 5), id="search"),
        pytest.param(lambda ix, x: ix.add(x), id="add"),
        pytest.param(lambda ix, x: ix.encode(x), id="encode"),
    ],
)
def test_bad_arrays_are_rejected(index, method, x, exc, fragment):
    with pytest.raises(exc, match=fragment):
        method(index, x)
    assert index.ntotal == 0


@pytest.mark.parametrize("x, exc, fragment", _bad_arrays())
def test_bad_training_arrays_are_rejected(x, exc, fragment):
    index = CSRIndex(D, k=8, config=CSRConfig(steps=1, device="cpu"))
    with pytest.raises(exc, match=fragment):
        index.train(x)
    assert not index.is_trained


def test_zero_vector_has_no_direction_under_cosine(index):
    x = np.zeros((2, D), dtype=np.float32)
    with pytest.raises(ValueError, match="all-zero rows"):
        index.add(x)


def test_torch_tensors_and_float64_are_accepted(filled_index, queries):
    D64, I64 = filled_index.search(queries.astype(np.float64), 5)
    Dt, It = filled_index.search(torch.from_numpy(queries.copy()), 5)
    D32, I32 = filled_index.search(queries, 5)
    np.testing.assert_array_equal(I64, I32)
    np.testing.assert_array_equal(It, I32)


def test_as_matrix_returns_contiguous_float32():
    x = np.arange(2 * D, dtype=np.int64).reshape(D, 2).T  # non-contiguous ints
    out = as_matrix(x, D)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (2, D)


def test_error_messages_name_the_argument(index):
    with pytest.raises(ValueError, match="queries has dimension 3"):
        index.search(np.ones((1, 3)), 5)


# ------------------------------------------------------------ search arguments
@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (dict(topk=0), ValueError, "topk must be positive"),
        (dict(topk=-5), ValueError, "topk must be positive"),
        (dict(topk=2.0), TypeError, "topk must be an integer"),
        (dict(query_k=0), ValueError, "query_k must be positive"),
        (dict(query_k=-1), ValueError, "query_k must be positive"),
        (dict(query_k=9), ValueError, "query_k=9 exceeds the maximum of 8"),  # the index's k=8 is the maximum
        (dict(k=0), ValueError, "number of results"),  # k is FAISS's name for topk: two different values
        (dict(score="dense"), ValueError, "score must be one of"),
        (dict(rerank=50), ValueError, "need the originals"),
        (dict(score="exact"), ValueError, "need the originals"),
        (dict(rerank=-1), ValueError, "rerank must be positive"),
        (dict(rerank=True), TypeError, "rerank must be an integer"),
    ],
)
def test_search_rejects_bad_arguments(filled_index, queries, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        filled_index.search(queries, **{"topk": 5, **kwargs})


@pytest.mark.parametrize("k, exc, fragment", [(0, ValueError, "must be positive"), (9, ValueError, "exceeds")])
def test_encode_rejects_bad_k(index, queries, k, exc, fragment):
    with pytest.raises(exc, match=fragment):
        index.encode(queries, k=k)


def test_rerank_zero_is_allowed_without_vectors(filled_index, queries):
    D, I = filled_index.search(queries, 5, rerank=0)
    assert I.shape == (len(queries), 5)


# ------------------------------------------------------------------------ ids
@pytest.mark.parametrize(
    "ids, exc, fragment",
    [
        ([0, 1, 1], ValueError, r"duplicates, e.g. \[1\]"),
        ([0, -2, 5], ValueError, "must be non-negative"),
        ([0, 1], ValueError, "ids has 2 entries but there are 3 vectors"),
        ([0, 1, 2, 3], ValueError, "ids has 4 entries but there are 3 vectors"),
        ([[0, 1, 2]], ValueError, "ids must be 1-D"),
        ([0.5, 1.0, 2.0], TypeError, "ids must be integers"),
        (["a", "b", "c"], TypeError, "ids must be integers"),
        (np.array([0, 1, 2**64 - 1], dtype=np.uint64), ValueError, "must fit in int64"),
        ([0.0, 1.0, 2.0**63], ValueError, "must fit in int64"),
    ],
)
def test_add_with_ids_rejects_bad_ids(index, corpus, ids, exc, fragment):
    with pytest.raises(exc, match=fragment):
        index.add_with_ids(corpus[:3], ids)
    assert index.ntotal == 0


def test_integral_float_ids_are_accepted(index, corpus):
    index.add_with_ids(corpus[:3], np.array([4.0, 7.0, 9.0]))
    np.testing.assert_array_equal(index.ids, [4, 7, 9])
    assert index.ids.dtype == np.int64


def test_ids_already_in_the_index_are_refused(index, corpus):
    index.add_with_ids(corpus[:3], [10, 11, 12])
    with pytest.raises(ValueError, match=r"ids already in the index: \[11\]"):
        index.add_with_ids(corpus[3:5], [11, 99])
    assert index.ntotal == 3


def test_add_numbers_after_the_largest_id(index, corpus):
    index.add_with_ids(corpus[:2], [2, 3])
    index.add(corpus[2:4])  # not ntotal.. (0, 1): after the largest id ever given, so never a clash
    np.testing.assert_array_equal(np.sort(index.ids), [2, 3, 4, 5])
    with pytest.raises(ValueError, match="ids already in the index: \\[3\\]"):
        index.add_with_ids(corpus[4:5], [3])
    index.add_with_ids(corpus[4:5], [3], upsert=True)
    assert index.ntotal == 4


@pytest.mark.parametrize("n_keys", [2, 4])
def test_keys_of_wrong_length_are_refused(index, corpus, n_keys):
    with pytest.raises(ValueError, match=f"keys has {n_keys} entries but there are 3 vectors"):
        index.add(corpus[:3], keys=[f"doc{i}" for i in range(n_keys)])
    assert index.ntotal == 0


def test_remove_ids_refuses_what_is_not_an_id(filled_index):
    n = filled_index.ntotal
    with pytest.raises(TypeError, match="ids must be integers"):
        filled_index.remove_ids([1.9])  # not id 1
    with pytest.raises(ValueError, match="must fit in int64"):
        filled_index.remove_ids(np.array([2**64 - 1], dtype=np.uint64))
    assert filled_index.ntotal == n and filled_index.remove_ids([1.0]) == 1


def test_add_reports_when_no_id_is_left(index, corpus):
    index.add_with_ids(corpus[:1], [2**63 - 1])
    with pytest.raises(ValueError, match="no ids left after the largest ever added"):
        index.add(corpus[1:2])
    index.add_with_ids(corpus[1:2], [5])
    assert index.ntotal == 2


@pytest.mark.parametrize(
    "column, ids, keys, fragment",
    [
        (pa.array([7, 3, 5]), [7, 3, 5], None, None),
        (pa.array([7.0, 3.0, 5.0]), [7, 3, 5], None, None),  # pandas writes integer ids with gaps as floats
        (pa.array(["a", "b", "c"]), None, ["a", "b", "c"], None),
        (pa.array(["a", "b", "a"]).dictionary_encode(), None, ["a", "b", "a"], None),
        (pa.array([7, None, 5]), None, None, "1 null ids"),
        (pa.array(["a", None, "c"]), None, None, "1 null ids"),
        (pa.array([True, False, True]), None, None, "ids must be integers .* or strings"),
        (pa.array([7.5, 3.0, 5.0]), None, None, "must be integers"),
        (pa.array([2**64 - 1, 1, 2], type=pa.uint64()), None, None, "must fit in int64"),
    ],
)
def test_id_columns_are_read_as_ids_or_keys_or_refused(tmp_path, column, ids, keys, fragment):
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(6, np.float32)), 2)
    pq.write_table(pa.table({"embedding": vectors, "id": column}), tmp_path / "e.parquet")
    if fragment is not None:
        with pytest.raises((ValueError, TypeError), match=fragment):
            read_embeddings(tmp_path / "e.parquet")
        return
    emb = read_embeddings(tmp_path / "e.parquet")
    assert (emb.ids.tolist() if emb.ids is not None else None) == ids and emb.keys == keys


def test_as_ids_helper():
    np.testing.assert_array_equal(as_ids(np.array([3, 1, 2], dtype=np.int32), 3), [3, 1, 2])
    assert as_ids([5], 1).dtype == np.int64


@pytest.mark.parametrize("k, exc", [(0, ValueError), (11, ValueError), (1.0, TypeError), (np.bool_(True), TypeError)])
def test_check_positive_helper(k, exc):
    with pytest.raises(exc):
        check_positive(k, "k", 10)
    assert check_positive(np.int64(10), "k", 10) == 10
    assert check_positive(None, "k", allow_none=True) is None


# -------------------------------------------------------------- unknown ids
def test_reconstruct_codes_of_unknown_id_is_a_key_error(filled_index):
    with pytest.raises(KeyError, match="unknown ids: \\[100000\\]"):
        filled_index.reconstruct_codes([0, 100000])
    with pytest.raises(KeyError):
        filled_index.reconstruct_codes([-1])


def test_keys_of_unknown_id_is_a_key_error(index, corpus):
    index.add(corpus[:3], keys=["a", "b", "c"])
    with pytest.raises(KeyError, match="unknown ids"):
        index.keys_of([0, 77])
    # -1 is the 'no result' padding of search, not an unknown id
    assert index.keys_of([[2, -1]]).tolist() == [["c", None]]


def test_keys_of_unknown_id_is_a_key_error_without_keys(filled_index):
    with pytest.raises(KeyError):
        filled_index.keys_of([10**6])


# ------------------------------------------------------------------- training
def test_train_on_non_empty_index_is_refused(filled_index, corpus):
    with pytest.raises(ValueError, match="already holds 600 vectors; call reset"):
        filled_index.train(corpus)


def test_train_after_reset_is_allowed(filled_index, corpus):
    filled_index.reset()
    filled_index.config.steps = 2
    filled_index.train(corpus[:100])
    assert filled_index.is_trained and filled_index.train_stats["steps"] == 2


@pytest.mark.parametrize(
    "pairs, fragment",
    [
        (lambda x: (x[:5],), "pairs must be a \\(queries, positives\\) tuple"),
        (lambda x: (x[:5], x[:4]), "pairs have 5 queries but 4 positives"),
        (lambda x: (x[:5], x[:5, :3]), "pairs\\[1\\] has dimension 3"),
    ],
)
def test_train_rejects_bad_pairs(corpus, pairs, fragment):
    index = CSRIndex(D, k=8, config=CSRConfig(steps=1, device="cpu"))
    with pytest.raises(ValueError, match=fragment):
        index.train(corpus, pairs=pairs(corpus))


def test_zero_training_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="steps"):
        CSRConfig(steps=0, device="cpu")


# ------------------------------------------------- a failed add changes nothing
@pytest.mark.parametrize(
    "bad_add",
    [
        pytest.param(lambda ix, x: ix.add(x[:4, :5]), id="wrong-dim"),
        pytest.param(lambda ix, x: ix.add(np.where(np.arange(D) == 3, np.nan, x[:4])), id="nan"),
        pytest.param(lambda ix, x: ix.add_with_ids(x[:3], [0, 1, 2]), id="ids-in-index"),
        pytest.param(lambda ix, x: ix.add_with_ids(x[:3], [1000, 1001, 1000]), id="duplicate-ids"),
        pytest.param(lambda ix, x: ix.add_with_ids(x[:3], [1000, -1, 1002]), id="negative-ids"),
        pytest.param(lambda ix, x: ix.add_with_ids(x[:3], [1000, 1001]), id="short-ids"),
        pytest.param(lambda ix, x: ix.add(x[:3], keys=["a"]), id="short-keys"),
        pytest.param(lambda ix, x: ix.add(np.zeros((2, D))), id="zero-rows"),
    ],
)
def test_failed_add_leaves_the_index_unchanged(filled_index, corpus, queries, bad_add):
    before_n = filled_index.ntotal
    before_ids = filled_index.ids.copy()
    D0, I0 = filled_index.search(queries, 10)
    with pytest.raises((ValueError, TypeError)):
        bad_add(filled_index, corpus)
    assert filled_index.ntotal == before_n
    np.testing.assert_array_equal(filled_index.ids, before_ids)
    D1, I1 = filled_index.search(queries, 10)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)
    # and the index still accepts a good batch afterwards
    filled_index.add(corpus[:2])
    assert filled_index.ntotal == before_n + 2


# ------------------------------------------------------------ read-only input
READ_ONLY_SCRIPT = """
import warnings
import numpy as np
from csr_index import CSRConfig, CSRIndex

x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
x.flags.writeable = False  # as np.load(..., mmap_mode="r") or an Arrow-backed array
warnings.simplefilter("error")
index = CSRIndex(8, k=2, h=16, metric="ip", config=CSRConfig(steps=2, device="cpu"))
index.train(x)
index.add(x)
index.search(x, 3)
"""


def test_read_only_input_is_used_without_warnings():
    # a fresh interpreter: torch shows this warning only once per process
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

"""A growing, changing collection: segments, deletes, upserts, concurrent readers, streaming builds."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import csr_index.store
from csr_index import CSRIndex
from csr_index.build import build_from_file
from csr_index.io import EmbeddingFile


def assert_same(a, b, tol=1e-6):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("score", ["code", "asymmetric", "exact"])
def test_many_small_adds_equal_one_bulk_add(make_index, corpus, queries, score):
    bulk = make_index(store_vectors=True).set_engine("inverted")
    bulk.add(corpus)
    small = make_index(store_vectors=True).set_engine("inverted")
    counts = []
    for chunk in np.array_split(corpus, 60):
        small.add(chunk)
        small.search(queries[:2], 3)  # searches between adds
        counts.append(len(small._store.snapshot.segments))
        sizes = [s.n for s in small._store.snapshot.segments]
        assert all(a > csr_index.store.MERGE_RATIO * b for a, b in zip(sizes, sizes[1:])), sizes
    assert max(counts) > 1 and max(counts) <= 4, "merges keep sizes geometric: few segments"
    assert counts[-1] > 1, "the comparisons below search several segments"
    np.testing.assert_array_equal(np.sort(small.ids), bulk.ids)
    for rerank in (0, 40):
        if score == "exact" and rerank:
            continue
        assert_same(small.search(queries, 10, score=score, rerank=rerank),
                    bulk.search(queries, 10, score=score, rerank=rerank))
    small.compact()
    assert len(small._store.snapshot.segments) == 1
    assert_same(small.search(queries, 10, score=score), bulk.search(queries, 10, score=score))


@pytest.mark.parametrize("engine", ["pruned", "inverted", "scipy", "torch"])
def test_removed_ids_are_never_returned(filled_index_factory, queries, engine):
    index = filled_index_factory(store_vectors=True).set_engine(engine)
    _, before = index.search(queries, 20, score="code", rerank=0)
    gone = np.unique(before[:, :5])
    assert index.remove_ids(np.concatenate([gone, [10**9]])) == len(gone)  # unknown ids are ignored
    assert index.ntotal == 600 - len(gone) and not np.isin(index.ids, gone).any()
    for kwargs in (dict(score="code", rerank=0), dict(score="asymmetric", rerank=0), dict(), dict(score="exact")):
        _, I = index.search(queries, 20, **kwargs)
        assert not np.isin(I, gone).any(), kwargs
    with pytest.raises(KeyError, match="unknown ids"):
        index.rescore(queries[:1], gone[None, :1], 1)
    assert index.remove_ids(gone) == 0


def test_purged_segments_and_reused_ids(make_index, corpus, queries):
    index = make_index(store_vectors=True)
    index.add(corpus[:200])
    assert index.remove_ids(np.arange(0, 100)) == 100  # half the segment: rewritten without them
    snap = index._store.snapshot
    assert snap.segments[0].n == 100 and snap.deleted[0] is None
    index.add_with_ids(corpus[:10], np.arange(10))  # removed ids may come back
    assert index.ntotal == 110
    D, I = index.search(corpus[:10], 1, score="exact")
    np.testing.assert_array_equal(I[:, 0], np.arange(10))


def test_add_never_gives_out_a_removed_id(make_index, corpus, tmp_path):
    index = make_index(store_vectors=True)
    index.add(corpus[:10])
    index.remove_ids([7, 8, 9])  # 30 % of the segment: rewritten without them, so no row holds 9 any more
    index.add(corpus[10:13])
    np.testing.assert_array_equal(np.sort(index.ids), [0, 1, 2, 3, 4, 5, 6, 10, 11, 12])
    index.remove_ids([11, 12])
    index.compact()
    index.save(tmp_path / "ix")
    loaded = CSRIndex.load(tmp_path / "ix")
    for ix in (index, loaded):
        ix.add(corpus[13:14])
        assert ix.ids.max() == 13, "the next id survives compact() and save/load"
    _, I = loaded.search(corpus[13:14], 1, score="exact")
    assert I[0, 0] == 13
    index.add_with_ids(corpus[14:15], [100])
    index.add(corpus[15:16])
    assert index.ids.max() == 101
    index.reset()  # as faiss reset: numbering starts again
    index.add(corpus[:2])
    np.testing.assert_array_equal(index.ids, [0, 1])


def test_rescore_counts_a_repeated_candidate_once(filled_index_factory, queries):
    index = filled_index_factory(store_vectors=True)
    plain = np.array([[10, 11, 12, -1], [3, 4, 5, 6]])
    repeated = np.array([[10, 10, 11, -1, 12, 11], [6, 3, 4, 5, 6, 6]])
    for score in ("exact", "asymmetric", "code"):
        D, I = index.rescore(queries[:2], repeated, 4, score=score)
        D0, I0 = index.rescore(queries[:2], plain, 4, score=score)
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_allclose(D, D0, rtol=1e-6)
        if score != "code":  # (a code score of 0 - no shared latent - is not a result)
            assert (I[0] == -1).sum() == 1, "three distinct candidates fill three of four slots"
        assert len(set(I[0][I[0] >= 0])) == (I[0] >= 0).sum() <= 3, "each id at most once"


def test_upsert_replaces_a_vector_in_one_step(make_index, corpus):
    index = make_index(store_vectors=True)
    index.add(corpus[:50])
    with pytest.raises(ValueError, match="ids already in the index"):
        index.add_with_ids(corpus[100:102], [3, 4])
    index.add_with_ids(corpus[100:102], [3, 4], upsert=True)
    assert index.ntotal == 50
    D, I = index.search(corpus[100:102], 1, score="exact")
    np.testing.assert_array_equal(I[:, 0], [3, 4])
    np.testing.assert_allclose(D[:, 0], 1.0, atol=2e-3)


def test_searches_from_many_threads_while_one_thread_adds(make_index, corpus, queries):
    index = make_index(store_vectors=True)
    index.add(corpus[:100])
    batches = [(np.arange(100 + 25 * i, 125 + 25 * i), corpus[(100 + 25 * i) % 600 : (125 + 25 * i) % 600 or 600])
               for i in range(20)]
    errors, done, seen = [], threading.Event(), [[], [], []]

    def reader(counts):
        try:
            while not done.is_set():
                D, I = index.search(queries, 10)
                assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in I), "an id returned twice"
                counts.append(index.ntotal)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(counts,)) for counts in seen]
    for t in threads:
        t.start()
    try:
        for ids, x in batches:
            index.add_with_ids(x, ids)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert index.ntotal == 600 and len(np.unique(index.ids)) == 600
    for counts in seen:  # every reader saw whole batches only, never a count going back
        assert counts and counts == sorted(counts) and all((c - 100) % 25 == 0 for c in counts)
    D, I = index.search(queries, 10, score="exact")
    assert I.max() >= 100


def test_training_on_a_sample(make_index, corpus, tiny_config):
    index = CSRIndex(corpus.shape[1], k=8, h=128, config=tiny_config(max_train=150))
    index.train(corpus)
    assert index.train_stats["n_train"] == 150


def test_embedding_file_reads_batches_and_rows(tmp_path, corpus):
    path = tmp_path / "e.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array(corpus.ravel()), corpus.shape[1])
    pq.write_table(pa.table({"id": np.arange(600) * 2, "embedding": emb}), path, row_group_size=128)
    source = EmbeddingFile(path)
    assert (source.num_rows, source.dim) == (600, corpus.shape[1])
    parts = list(source.batches(100))
    np.testing.assert_array_equal(np.concatenate([p.vectors for p in parts]), corpus)
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), np.arange(600) * 2)
    rows = np.array([0, 5, 127, 128, 599])
    np.testing.assert_array_equal(source.rows(rows, batch_rows=64), corpus[rows])
    np.save(tmp_path / "e.npy", corpus)
    np.testing.assert_array_equal(EmbeddingFile(tmp_path / "e.npy").rows(rows), corpus[rows])


def test_build_from_file_equals_building_in_memory(tmp_path, corpus, queries, tiny_config):
    path = tmp_path / "e.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array(corpus.ravel()), corpus.shape[1])
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(600)], "embedding": emb}), path)
    streamed = CSRIndex(corpus.shape[1], k=8, h=128, config=tiny_config())
    seconds = build_from_file(streamed, EmbeddingFile(path), batch_rows=64)
    assert set(seconds) == {"train", "add", "compact"}
    direct = CSRIndex(corpus.shape[1], k=8, h=128, config=tiny_config())
    direct.train(corpus)
    direct.add(corpus, keys=[f"d{i}" for i in range(600)])
    assert len(streamed._store.snapshot.segments) == 1
    assert_same(streamed.search(queries, 10), direct.search(queries, 10), tol=1e-5)
    assert streamed.keys_of([7]).tolist() == ["d7"]


def test_a_bulk_load_defers_merges_to_its_end(make_index, corpus):
    """Inside merges_deferred every add stays its own segment; the next add after it merges again."""
    index = make_index(store_vectors=True)
    with index._store.merges_deferred():
        for chunk in np.array_split(corpus[:300], 6):
            index.add(chunk)
        assert len(index._store.snapshot.segments) == 6
    index.add(corpus[300:350])
    assert len(index._store.snapshot.segments) < 6 and index.ntotal == 350


def test_adds_from_two_threads_get_disjoint_ids(make_index, corpus):
    """add() from several threads (a FAISS user's thread pool): every row is kept, under its own id."""
    index = make_index(store_vectors=True)
    x = np.tile(corpus, (9, 1))[:5000]
    errors: list[BaseException] = []

    def writer(part: np.ndarray) -> None:
        try:
            for batch in np.array_split(part, 10):
                index.add(batch)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(part,)) for part in (x[:2500], x[2500:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert index.ntotal == 5000 and len(np.unique(index.ids)) == 5000

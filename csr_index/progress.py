"""Progress bars that stay quiet where nobody watches them."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable | None = None, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, shown only when ``show``. On a terminal it refreshes as usual; written to a
    file or a CI log it refreshes at most every 30 s, so a log holds a few lines, not one per step."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 30.0)
    if not interactive:
        kwargs.setdefault("maxinterval", max(kwargs["mininterval"], 30.0))
    return tqdm(iterable, disable=not show, **kwargs)

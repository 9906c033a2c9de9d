"""sentence-transformers' CSR models read as csr-index encoders: ``SparseAutoEncoder`` (formerly
``CSRSparsity``) module files, alone or as the last module of a ``SparseEncoder`` directory.

The module (sentence-transformers 6.2, ``sparse_encoder/modules/sparse_auto_encoder.py``) stores
``config.json`` (``input_dim``, ``hidden_dim``, ``k``, ``k_aux``, ``normalize``, ``dead_threshold``)
and ``model.safetensors`` with ``encoder.weight`` (h, d) — saved under its tied alias
``decoder.linear.weight`` — ``pre_bias`` (d), ``latent_bias`` (h) and the training statistic
``stats_last_nonzero`` (h). At inference it computes ``relu(topk((x - pre_bias) W^T + latent_bias, k))``
with ``k = max_active_dims`` of the SparseEncoder (default: the module's ``k``): exactly
:meth:`csr_index.SparseAdapter.encode`. Reading needs only safetensors and JSON, so it lives here,
under :meth:`csr_index.CSRIndex.from_sentence_transformers`; writing modules, whole SparseEncoders
and embedding text are :mod:`csr_index.integrations.sentence_transformers`, which re-exports
these names.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .config import CSRConfig
from .encoder import CSREncoder
from .model import SparseAdapter

__all__ = ["UnsupportedModelError", "STModelInfo", "SAE_CLASSES", "load_sparse_autoencoder", "read_modules",
           "encoder_from_sentence_transformers"]

log = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    """A sentence-transformers model or module that csr-index cannot reproduce exactly."""


SAE_CLASSES = ("SparseAutoEncoder", "CSRSparsity")
CONFIG_DEFAULTS = {"k": 8, "k_aux": 512, "normalize": False, "dead_threshold": 30}  # SparseAutoEncoder.__init__
CONFIG_KEYS = {"input_dim", "hidden_dim", *CONFIG_DEFAULTS}
WEIGHT_NAMES = ("encoder.weight", "decoder.linear.weight")  # one tied tensor; ST saves the second name
NORMALIZE_REFUSED = (
    "normalize=true (a per-vector layer norm of the input, with its mean and std re-applied on decoding) "
    "is not supported: csr-index encodes and scores the input vectors themselves, so its asymmetric "
    "scores, value refit and stored reconstruction norms would be wrong. The paper's checkpoints and "
    "sentence-transformers' default use normalize=false"
)


@dataclass(frozen=True)
class STModelInfo:
    """What :func:`load_sparse_autoencoder` read besides the weights."""

    path: Path
    """The directory given: a SparseEncoder model or a SparseAutoEncoder module."""
    module_path: Path
    """The SparseAutoEncoder module directory (``path`` itself for a bare module)."""
    module_class: str
    """'SparseAutoEncoder' or 'CSRSparsity' (its name before sentence-transformers 5.x renamed it)."""
    k: int
    """Active latents of ST's ``encode``: the SparseEncoder's ``max_active_dims``, else the module's ``k``."""
    module_k: int
    k_aux: int
    dead_threshold: int
    similarity_fn_name: str | None
    """The SparseEncoder's similarity ('dot' when unset, as ST); None for a bare module."""
    normalized_input: bool | None
    """Whether a Normalize module (L2) feeds the SparseAutoEncoder; None for a bare module."""
    base_modules: tuple[str, ...] = ()
    """Class names of the pipeline's modules before the SparseAutoEncoder."""


def read_modules(path: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The ``modules.json`` entries of a sentence-transformers model directory, or None without one."""
    file = Path(path) / "modules.json"
    if not file.is_file():
        return None
    try:
        modules = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} is not readable JSON: {exc}") from exc
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ValueError(f"{file} must be a list of modules with a 'type' each")
    return modules


def _class_name(entry: dict[str, Any]) -> str:
    return str(entry["type"]).rsplit(".", 1)[-1]


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise FileNotFoundError(f"missing {file.name} in {file.parent}")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return data


def _module_config(module_path: Path) -> dict[str, Any]:
    config = _read_json(module_path / "config.json")
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise UnsupportedModelError(f"{module_path}/config.json has options csr-index does not know: {sorted(unknown)}")
    missing = {"input_dim", "hidden_dim"} - set(config)
    if missing:
        raise ValueError(f"{module_path}/config.json lacks {sorted(missing)}")
    config = {**CONFIG_DEFAULTS, **config}
    for name in ("input_dim", "hidden_dim", "k", "k_aux", "dead_threshold"):
        if isinstance(config[name], bool) or not isinstance(config[name], int) or config[name] < 0:
            raise ValueError(f"{module_path}/config.json: {name} must be a non-negative integer, got {config[name]!r}")
    if config["normalize"]:
        raise UnsupportedModelError(f"{module_path}: {NORMALIZE_REFUSED}")
    return config


def _module_weights(module_path: Path, d: int, h: int) -> dict[str, torch.Tensor]:
    file = module_path / "model.safetensors"
    if not file.is_file():
        if (module_path / "pytorch_model.bin").is_file():
            raise UnsupportedModelError(
                f"{module_path} has only pytorch_model.bin (a pickle); csr-index reads model.safetensors only: "
                "re-save the model with sentence-transformers (safe_serialization=True)"
            )
        raise FileNotFoundError(f"missing model.safetensors in {module_path}")
    tensors = load_file(str(file))
    names = [n for n in WEIGHT_NAMES if n in tensors]
    if not names:
        raise ValueError(f"{file} has no {' or '.join(WEIGHT_NAMES)}; tensors: {sorted(tensors)}")
    if len(names) == 2 and not torch.equal(tensors[names[0]], tensors[names[1]]):
        raise ValueError(f"{file}: {WEIGHT_NAMES[0]} and {WEIGHT_NAMES[1]} are one tied weight but differ")
    unknown = set(tensors) - {*WEIGHT_NAMES, "pre_bias", "latent_bias", "stats_last_nonzero"}
    if unknown or not {"pre_bias", "latent_bias"} <= set(tensors):
        raise ValueError(f"{file}: expected {WEIGHT_NAMES[0]}, pre_bias, latent_bias; found {sorted(tensors)}")
    out = {"W": tensors[names[0]], "pre_bias": tensors["pre_bias"], "latent_bias": tensors["latent_bias"]}
    expected = {"W": (h, d), "pre_bias": (d,), "latent_bias": (h,)}
    for name, shape in expected.items():
        if tuple(out[name].shape) != shape:
            raise ValueError(f"{file}: {name} has shape {tuple(out[name].shape)}, expected {shape} (d={d}, h={h})")
        if not out[name].is_floating_point() or not torch.isfinite(out[name]).all():
            raise ValueError(f"{file}: {name} must be finite floats")
        if out[name].dtype != torch.float32:
            log.info("%s: %s is %s; converted to float32", file, name, out[name].dtype)
    return {name: t.to(torch.float32) for name, t in out.items()}


def _find_module(path: Path) -> tuple[Path, str, dict[str, Any] | None, list[dict[str, Any]]]:
    """(module dir, class name, the SparseEncoder's settings or None, modules before it)."""
    modules = read_modules(path)
    if modules is None:
        config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
        if not {"input_dim", "hidden_dim"} <= set(config):
            raise ValueError(
                f"{path} is neither a sentence-transformers model (modules.json) nor a SparseAutoEncoder "
                "module directory (config.json with input_dim and hidden_dim)"
            )
        return path, "SparseAutoEncoder", None, []
    found = [i for i, m in enumerate(modules) if _class_name(m) in SAE_CLASSES]
    if not found:
        raise UnsupportedModelError(
            f"{path} has no SparseAutoEncoder (CSR) module; its modules are {[_class_name(m) for m in modules]}"
        )
    if len(found) > 1 or found[0] != len(modules) - 1:
        raise UnsupportedModelError(
            f"{path}: the SparseAutoEncoder must be the last and only CSR module; modules are "
            f"{[_class_name(m) for m in modules]}"
        )
    entry = modules[found[0]]
    settings_file = path / "config_sentence_transformers.json"
    settings = _read_json(settings_file) if settings_file.is_file() else {}
    return path / str(entry.get("path", "")), _class_name(entry), settings, modules[:-1]


def load_sparse_autoencoder(path: str | os.PathLike) -> tuple[SparseAdapter, int, STModelInfo]:
    """Read a SparseEncoder directory, or a SparseAutoEncoder / CSRSparsity module directory,
    into a :class:`SparseAdapter` and the k of ST's ``encode``.

    ``adapter.encode(x, k)`` then equals ST's output for the same dense inputs ``x`` (the
    SparseAutoEncoder's input: the pipeline's embedding before it). Encode with
    ``CSRConfig.refit=False`` to keep ST's values. ``latent_weight`` is all ones (ST has none).
    Raises FileNotFoundError, ValueError (bad shapes or values) or :class:`UnsupportedModelError`
    (``normalize=true``, pickled weights, unknown options, modules after the SparseAutoEncoder).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such model directory: {root}")
    module_path, module_class, settings, before = _find_module(root)
    config = _module_config(module_path)
    d, h = config["input_dim"], config["hidden_dim"]
    if d < 1 or h < 1:
        raise ValueError(f"{module_path}/config.json: input_dim and hidden_dim must be positive, got {d}, {h}")
    k = config["k"]
    similarity = None
    if settings is not None:
        k = settings.get("max_active_dims") or k
        similarity = settings.get("similarity_fn_name") or "dot"
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h:
        raise ValueError(f"{root}: k (max_active_dims) must be an integer in [1, {h}], got {k!r}")
    weights = _module_weights(module_path, d, h)
    adapter = SparseAdapter(d, h)
    with torch.no_grad():
        for name, tensor in weights.items():
            getattr(adapter, name).copy_(tensor)
    info = STModelInfo(
        path=root,
        module_path=module_path,
        module_class=module_class,
        k=k,
        module_k=config["k"],
        k_aux=config["k_aux"],
        dead_threshold=config["dead_threshold"],
        similarity_fn_name=similarity,
        normalized_input=None if settings is None else bool(before and _class_name(before[-1]) == "Normalize"),
        base_modules=tuple(_class_name(m) for m in before),
    )
    log.info("read %s from %s: d=%d h=%d k=%d", module_class, module_path, d, h, k)
    return adapter.eval(), k, info


def encoder_from_sentence_transformers(path: str | os.PathLike, *, metric: str | None = None,
                                       refit: bool = False) -> CSREncoder:
    """A trained :class:`CSREncoder` whose adapter is the sentence-transformers CSR model at
    ``path`` (see :func:`load_sparse_autoencoder`): ``k`` is ST's ``max_active_dims``, no latent
    (IDF) weights, ``refit`` as given; ``metric`` defaults from ST's similarity (see
    :func:`csr_index.integrations.sentence_transformers.index_from_sentence_transformers`)."""
    adapter, k, info = load_sparse_autoencoder(path)
    metric = _metric_for(info, metric)
    config = CSRConfig(k=k, h=adapter.h, refit=bool(refit), idf_weights=False)
    meta = {"d": adapter.d, "h": adapter.h, "k": k, "metric": metric, "config": config.to_dict(),
            "train_stats": {"imported_from": str(Path(path).resolve()), "st_module": info.module_class}}
    state = {name: t.detach().cpu().numpy() for name, t in adapter.state_dict().items()}
    return CSREncoder.from_state(meta, state)


def _metric_for(info: STModelInfo, metric: str | None) -> str:
    if metric is not None:
        if metric not in ("cosine", "ip"):
            raise ValueError(f"metric must be 'cosine' or 'ip', got {metric!r}")
        if metric == "cosine" and not info.normalized_input:
            log.warning("metric='cosine' L2-normalises inputs before encoding; %s does not, so codes of "
                        "non-unit inputs will differ from ST's", info.path)
        return metric
    similarity = info.similarity_fn_name
    if similarity in (None, "dot"):
        return "ip"
    if similarity == "cosine":
        if info.normalized_input:
            return "cosine"
        raise UnsupportedModelError(
            f"{info.path} scores by cosine, but its SparseAutoEncoder input is not L2-normalised: csr-index's "
            "metric='cosine' would normalise it and change the codes. Pass metric='ip' (ST's codes, "
            "dot-product scores), or metric='cosine' to accept different codes"
        )
    raise UnsupportedModelError(f"{info.path}: similarity {similarity!r} has no csr-index metric (cosine, dot only)")

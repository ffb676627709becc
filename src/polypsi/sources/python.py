"""The `python` model source: your own `nn.Module` from a function in a package or a file.

`model.entry` is `"package.module:function"` (importable from the environment) or
`"path/to/file.py:function"` (relative to the folder you run snakemake in). The function is
called with `model.kwargs` and returns the module; `model.checkpoint` is loaded into it.
A module may declare its preprocessing as an attribute
`polypsi_preprocessing = {"input_size": 224, "mean": [...], "std": [...]}` (each key optional),
used where the config leaves `model.input_size` / `mean` / `std` unset.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..errors import ModelLoadError
from ..models import load_weights


def _split(entry: str) -> tuple[str, str]:
    where, sep, func = entry.rpartition(":")
    if not sep or not where or not func:
        raise ModelLoadError(
            f"model.entry {entry!r} must be 'package.module:function' or 'path/to/file.py:function'"
        )
    return where, func


def _import_failure(entry: str, e: BaseException) -> ModelLoadError:
    tb = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" ({tb.filename}:{tb.lineno})" if tb else ""
    return ModelLoadError(f"model.entry {entry!r}: importing it failed with {type(e).__name__}: {e}{at}")


def load_entry(entry: str):
    """The function named by `entry` (a module path or a file path, then `:function`)."""
    where, func = _split(entry)
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"model.entry {entry!r}: file {path} does not exist (paths are relative to "
                                 "the folder you run snakemake in)")
        # One module name per file, so two entries from different files never collide.
        name = f"polypsi_entry_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[name]
                raise _import_failure(entry, e) from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ModelLoadError(f"model.entry {entry!r}: no module {e.name!r} is importable here; install it "
                                 "or give a file path ('path/to/file.py:function')") from None
        except Exception as e:
            raise _import_failure(entry, e) from None
    fn = getattr(module, func, None)
    if fn is None:
        public = sorted(n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise ModelLoadError(f"model.entry {entry!r}: {where} has no {func!r}; it has {public[:12]}")
    if not callable(fn):
        raise ModelLoadError(f"model.entry {entry!r}: {func!r} is not callable")
    return fn


def build_python(cfg: Config) -> nn.Module:
    """The registry's `python` model source."""
    m = cfg.model
    if not m.entry:
        raise ModelLoadError("model.source: python needs model.entry, e.g. 'mypackage.models:build' "
                             "or 'models/net.py:build'")
    fn = load_entry(m.entry)
    torch.manual_seed(m.init_seed)  # random init is reproducible when no checkpoint is given
    try:
        model = fn(**m.kwargs)
    except TypeError as e:
        raise ModelLoadError(f"model.entry {m.entry!r} could not be called with model.kwargs {m.kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model.entry {m.entry!r} returned {type(model).__name__}, not a torch.nn.Module")
    if m.checkpoint:
        load_weights(model, m.checkpoint, f"model.entry {m.entry!r}")
    return model

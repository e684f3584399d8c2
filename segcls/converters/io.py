"""
Reading checkpoints from the ecosystem without executing their pickles: a ``.pth``/``.pt``/``.bin``
torch file (the state dict itself, or under ``state_dict`` / ``model`` / ``module``, e.g.
mmsegmentation's ``{"meta": ..., "state_dict": ...}``), a ``.safetensors`` file, or a folder of
the HF ``save_pretrained`` layout (``model.safetensors`` / ``pytorch_model.bin``, sharded ones with
their ``*.index.json``).

Objects in a torch pickle that are not tensors or plain containers (mmengine's ``HistoryBuffer``,
numpy arrays in ``meta``, ...) are replaced by inert stand-ins: nothing from the file is imported
or executed, and the tensors are returned.
"""
import json
import os
import pickle
import types
from typing import Dict

import torch

_CONTAINERS = ("state_dict", "model", "module")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")
_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "tuple", "list", "dict", "int", "float", "bool", "str"}


class _Inert:
    """Stand-in for a class the checkpoint's pickle names (never imported); swallows its state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _inert_class(module: str, name: str) -> type:
    return type(name, (_Inert,), {"__module__": f"<inert {module}>"})


class _Unpickler(pickle.Unpickler):
    """Resolves torch's and a few builtin names; every other global becomes an inert stand-in."""

    def find_class(self, module, name):
        if module == "torch" or module.startswith("torch.") or module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module == "_codecs" and name == "encode":
            return super().find_class(module, name)
        return _inert_class(module, name)


_PICKLE_MODULE = types.SimpleNamespace(Unpickler=_Unpickler, load=lambda f, **kw: _Unpickler(f, **kw).load(), __name__="segcls_inert_pickle")


def _tensors(obj, path: str) -> Dict[str, torch.Tensor]:
    while isinstance(obj, dict) and any(isinstance(obj.get(c), dict) for c in _CONTAINERS):
        obj = next(obj[c] for c in _CONTAINERS if isinstance(obj.get(c), dict))
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ValueError(f"not a checkpoint: '{path}' holds no tensors (expected a state dict, possibly under "
                         f"one of {list(_CONTAINERS)})")
    return tensors


def _read_torch(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # non-tensor objects (e.g. mmseg's meta): read again with inert stand-ins
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"not a checkpoint: '{path}' ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE)
    except Exception as e:  # a corrupt file: say so, naming it
        raise ValueError(f"not a checkpoint: '{path}' ({type(e).__name__}: {e})") from e


def _hf_folder_files(path: str):
    for name in _HF_FILES:
        index = os.path.join(path, name + ".index.json")
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(path, s) for s in shards]
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    raise FileNotFoundError(
        f"'{path}' is a folder without {' or '.join(_HF_FILES)} (or their .index.json): expected a HF "
        "save_pretrained folder"
    )


def read_checkpoint(path: str, key: str = "--input") -> Dict[str, torch.Tensor]:
    """The tensors ({name: tensor}, names as stored) of the checkpoint file or HF folder at
    ``path`` (see the module docstring). ``key`` names the option that gave ``path``, for errors."""
    if os.path.isdir(path):
        state = {}
        for file in _hf_folder_files(path):
            state.update(read_checkpoint(file, key))
        return state
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise ValueError(f"not a checkpoint: '{path}' is not a readable .safetensors file ({e})") from e
    return _tensors(_read_torch(path), path)

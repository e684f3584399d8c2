"""
segcls's checkpointer: detectron2's ``DetectionCheckpointer`` that never loses or silently
misloads weights.

- **Atomic saves**: a checkpoint (and ``last_checkpoint``) is written to a temporary name and
  renamed (:func:`segcls.utils.io.atomic_write`), so a process killed during a save leaves the
  previous files intact and no truncated file under a checkpoint's name.
- **Verified resume**: ``resume_or_load(resume=True)`` loads the file ``last_checkpoint`` names;
  if it is unreadable it falls back to the newest readable ``*.pth`` of the folder (newest by
  modification time), logging which one it used and why.
- **Strict weights**: a file that is not a checkpoint raises ``NotACheckpointError("not a
  checkpoint: <path>")``. Unless ``allow_partial`` (``MODEL.WEIGHTS_ALLOW_PARTIAL``), loading
  raises :class:`WeightsMismatchError` when the file matches no tensor of the model, holds
  tensors the model does not have or of another shape, or leaves tensors of a top-level module
  it does provide (e.g. ``backbone``) unset (a ResNet-50 file in a ResNet-101, a 7x7-stem file
  in a 3-conv-stem model). A file that covers only some top-level modules (a converted backbone)
  is a normal initialisation; with ``complete=True`` (evaluation) every tensor must be set.
"""
import logging
import os
import pickle
import zipfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.io import atomic_write

logger = logging.getLogger(__name__)

CONVERSION_HINT = (
    "convert backbone checkpoints (torchvision, timm, official releases) with tools/convert_pretrained.py; "
    "set MODEL.WEIGHTS_ALLOW_PARTIAL True to load the matching tensors anyway"
)
# Model tensors that are never reported missing (BN's counters, which PyTorch tolerates, and the
# buffers detectron2 sets from the config), so they neither count as matched nor need the file.
_NEVER_MISSING = ("num_batches_tracked", "pixel_mean", "pixel_std")


class NotACheckpointError(ValueError):
    """A file is not a readable PyTorch checkpoint (garbage, truncated, another format)."""


class WeightsMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model; the message names the file and the first mismatches."""


class SegclsCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` with atomic saves, verified resumption and strict loading (see the
    module docstring).

    Args:
        allow_partial: load whatever matches (detectron2's behaviour: mismatches only logged).
        complete: every model tensor must come from the file (checked unless ``allow_partial``).
    """

    def __init__(self, model, save_dir="", *, allow_partial=False, complete=False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.allow_partial = allow_partial
        self.complete = complete
        self._loading = ""

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_write(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def load(self, path, *args, **kwargs):
        self._loading = path
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        tagged = self.get_checkpoint_file()
        others = sorted(
            (f for f in self.get_all_checkpoint_files() if os.path.abspath(f) != os.path.abspath(tagged)),
            key=os.path.getmtime,
            reverse=True,
        )
        failures = []
        for candidate in [tagged] + others:
            try:
                checkpoint = self._read(candidate)
            except (NotACheckpointError, FileNotFoundError) as e:
                failures.append(str(e))
                continue
            if failures:
                logger.warning(f"Resuming from '{candidate}' instead: " + "; ".join(failures))
            return self._load_checkpoint(candidate, checkpoint)
        raise NotACheckpointError(f"no readable checkpoint in '{self.save_dir}' to resume from: " + "; ".join(failures))

    def _read(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint '{path}' does not exist")
        return self._load_file(path)

    def _load_checkpoint(self, path, checkpoint):
        """fvcore's ``load`` body for an already read ``checkpoint`` (all checkpointables)."""
        self._loading = path
        self.logger.info(f"[Checkpointer] Loading from {path} ...")
        incompatible = self._load_model(checkpoint)
        self._log_incompatible_keys(incompatible)
        for key in self.checkpointables:
            if key in checkpoint:
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _load_file(self, filename):
        try:
            loaded = super()._load_file(filename)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, UnicodeDecodeError) as e:
            raise NotACheckpointError(f"not a checkpoint: {filename} ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        if not isinstance(loaded.get("model"), dict):
            raise NotACheckpointError(f"not a checkpoint: {filename} (no state dict of tensors)")
        return loaded

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if not self.allow_partial:
            check_loaded(self.model.state_dict(), incompatible, self._loading, self.complete)
        return incompatible


def check_loaded(model_state, incompatible, path, complete=False):
    """
    Raise :class:`WeightsMismatchError` if loading ``path`` into a model with state dict
    ``model_state`` gave ``incompatible`` (fvcore's ``_IncompatibleKeys``) that is not a clean
    load: no tensor matched, unexpected keys, shape mismatches, or missing tensors of a
    top-level module the file provides (any missing tensor if ``complete``).
    """
    missing = set(incompatible.missing_keys)
    matched = [k for k in model_state if k not in missing and not k.endswith(_NEVER_MISSING)]
    provided = {k.split(".", 1)[0] for k in matched}
    unset = [k for k in incompatible.missing_keys if complete or k.split(".", 1)[0] in provided]
    problems = []
    if incompatible.incorrect_shapes:
        shown = ", ".join(f"{k} {tuple(a)} in the file vs {tuple(b)} in the model" for k, a, b in incompatible.incorrect_shapes[:5])
        problems.append(f"{len(incompatible.incorrect_shapes)} of another shape ({shown})")
    if incompatible.unexpected_keys:
        problems.append(f"{len(incompatible.unexpected_keys)} not in the model ({', '.join(incompatible.unexpected_keys[:5])})")
    if unset:
        problems.append(f"{len(unset)} model tensors not in the file ({', '.join(unset[:5])})")
    if not matched:
        problems.insert(0, "no tensor matches the model")
    if problems:
        raise WeightsMismatchError(
            f"MODEL.WEIGHTS '{path}': {len(matched)} of the model's {len(model_state)} tensors matched; "
            + "; ".join(problems)
            + f". {CONVERSION_HINT}."
        )

"""Small file helpers: writes are atomic (temp file in the same folder, then rename), so an
interrupted run never leaves a half-written output behind. Written files get the mode the umask
gives (as ``open`` would: ``0o666 & ~umask``), not the private mode of temporary files, so a
dataset prepared by one user is readable by the others the umask allows. A run killed during a
write leaves only a temporary file (``.<name>.<random>.tmp``), which
:func:`remove_stale_temp_files` deletes on the next run."""
import contextlib
import os
import re
import tempfile

import numpy as np
from PIL import Image


_TEMP_SUFFIX = ".tmp"
# atomic_path's temporary names: "." + basename + "." + mkstemp's 8 random characters + suffix
# (".tmp", or the basename's own extension with keep_extension).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)$")


def _is_temp_name(name):
    match = _TEMP_NAME.match(name)
    return bool(match) and match["suffix"] in (_TEMP_SUFFIX, os.path.splitext(match["name"])[1])


def current_umask():
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder):
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when a process was
    killed during a write (no two runs may write the same folder at once). Returns their number."""
    if not os.path.isdir(folder):
        return 0
    stale = [name for name in os.listdir(folder) if _is_temp_name(name)]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return len(stale)


@contextlib.contextmanager
def atomic_path(path, keep_extension=False):
    """A temporary path next to ``path``, renamed to ``path`` on success, else deleted. Its name
    ends in ``.tmp`` (no reader or glob mistakes it for a finished file), or with
    ``keep_extension`` in ``path``'s own extension (for writers that pick the format from it, e.g.
    OpenCV's ``VideoWriter``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = (os.path.splitext(path)[1] if keep_extension else "") or _TEMP_SUFFIX
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; on success rename it to ``path``, else delete it."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_save_image(array, path, **save_kwargs):
    """Save an image array with the format given by ``path``'s extension, atomically."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[os.path.splitext(path)[1].lower()]
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format=fmt, **save_kwargs)


def atomic_save_label_png(labels, path, palette=None):
    """
    Save a (H, W) map of class indices as a PNG, atomically: a palette PNG (mode P, the indices
    stored as they are, shown in ``palette``'s (K, 3) RGB colours; grayscale (mode L) without a
    palette) when all values are < 256,
    else a 16-bit grayscale PNG (mode I;16). Read back with ``segcls.data.dataset_mapper.read_label_image``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= 65536):
        raise ValueError(f"{path}: label values must be in [0, 65535], got [{labels.min()}, {labels.max()}]")
    if labels.size == 0 or labels.max() < 256:
        image = Image.fromarray(labels.astype(np.uint8))
        if palette is not None:  # mode L -> P, the indices unchanged
            image.putpalette(np.asarray(palette, dtype=np.uint8)[:256].ravel().tolist())
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    with atomic_write(path) as f:
        image.save(f, format="PNG")

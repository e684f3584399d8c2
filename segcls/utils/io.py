"""Small file helpers: writes are atomic (temp file in the same folder, then rename), so an
interrupted run never leaves a half-written output behind."""
import contextlib
import os
import tempfile

import numpy as np
from PIL import Image


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path next to ``path`` (same extension, for writers that pick the format from it,
    e.g. OpenCV's ``VideoWriter``); on success it is renamed to ``path``, else deleted."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
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

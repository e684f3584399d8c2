"""Small file helpers: writes are atomic (temp file in the same folder, then rename), so an
interrupted run never leaves a half-written output behind."""
import contextlib
import os
import tempfile

import numpy as np
from PIL import Image


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; on success rename it to ``path``, else delete it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_image(array, path, **save_kwargs):
    """Save an image array with the format given by ``path``'s extension, atomically."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[os.path.splitext(path)[1].lower()]
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format=fmt, **save_kwargs)

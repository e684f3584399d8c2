"""Label-map colouring, legends and panels for overlays, TensorBoard pictures and analysis figures."""
import cv2
import numpy as np
from detectron2.data.catalog import Metadata


def default_palette(num_classes, seed=0):
    """Deterministic distinct-ish RGB colours, (num_classes, 3) uint8."""
    return np.random.default_rng(seed).integers(40, 256, size=(num_classes, 3)).astype(np.uint8)


def colorize_labels(labels, num_classes, colors=None):
    """(H, W) int labels -> (H, W, 3) uint8 RGB; labels outside [0, num_classes) (ignore) are black."""
    palette = np.asarray(colors, dtype=np.uint8)[:num_classes] if colors else default_palette(num_classes)
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_classes)
    return np.where(valid[..., None], palette[np.clip(labels, 0, num_classes - 1)], 0).astype(np.uint8)


def draw_legend(class_ids, class_names, palette, width, entry_width=120, row_height=16):
    """
    A legend of ``class_ids`` (colour swatch + name, in a grid of ``entry_width`` columns) as a
    (rows * row_height, width, 3) uint8 RGB image on black; (0, width, 3) if ``class_ids`` is empty.
    ``palette``: (K, 3) uint8 RGB colours indexed by class id.
    """
    class_ids = list(class_ids)
    columns = max(1, width // entry_width)
    rows = (len(class_ids) + columns - 1) // columns
    legend = np.zeros((rows * row_height, width, 3), dtype=np.uint8)
    for i, k in enumerate(class_ids):
        y, x = (i // columns) * row_height, (i % columns) * entry_width
        legend[y + 3 : y + row_height - 3, x + 3 : x + 13] = palette[k]
        cv2.putText(legend, str(class_names[k]), (x + 17, y + row_height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return legend


def segmentation_panel(image, labels, class_names, colors=None, ignore_value=255):
    """
    ``image | labels[0] | labels[1] | ...`` side by side (e.g. image | ground truth | prediction),
    over a legend of the classes present in any of ``labels``: (H + legend, W * (1 + len(labels)), 3)
    uint8 RGB. ``image``: (H, W, 3) uint8 RGB; each label map (H, W) int, ``ignore_value`` and
    out-of-range values black. ``colors``: K RGB colours (metadata ``stuff_colors``), else
    :func:`default_palette`.
    """
    num_classes = len(class_names)
    palette = np.asarray(colors, dtype=np.uint8)[:num_classes] if colors else default_palette(num_classes)
    panels = [np.asarray(image, dtype=np.uint8)] + [colorize_labels(lab, num_classes, palette.tolist()) for lab in labels]
    row = np.concatenate(panels, axis=1)
    present = sorted({int(v) for lab in labels for v in np.unique(lab) if 0 <= v < num_classes and v != ignore_value})
    return np.concatenate([row, draw_legend(present, class_names, palette, row.shape[1])], axis=0)


def drawing_metadata(meta, num_classes):
    """
    A detectron2 ``Metadata`` with ``stuff_classes`` and ``stuff_colors`` for drawing with
    ``Visualizer.draw_sem_seg`` (which would pick random colours where a dataset has none): those
    of ``meta`` (a dataset's metadata, or None), else ``"class k"`` names and :func:`default_palette`.
    Raises ``ValueError`` if ``meta`` has another number of classes than ``num_classes``.
    """
    classes = list(getattr(meta, "stuff_classes", None) or [f"class {k}" for k in range(num_classes)])
    if len(classes) != num_classes:
        raise ValueError(f"dataset '{meta.name}' has {len(classes)} classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}")
    colors = getattr(meta, "stuff_colors", None) or default_palette(num_classes).tolist()
    return Metadata(name=getattr(meta, "name", ""), stuff_classes=classes,
                    stuff_colors=[[int(c) for c in color] for color in colors[:num_classes]])

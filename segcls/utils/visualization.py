"""Label-map colouring for overlays and analysis figures."""
import numpy as np


def default_palette(num_classes, seed=0):
    """Deterministic distinct-ish RGB colours, (num_classes, 3) uint8."""
    return np.random.default_rng(seed).integers(40, 256, size=(num_classes, 3)).astype(np.uint8)


def colorize_labels(labels, num_classes, colors=None):
    """(H, W) int labels -> (H, W, 3) uint8 RGB; labels outside [0, num_classes) (ignore) are black."""
    palette = np.asarray(colors, dtype=np.uint8)[:num_classes] if colors else default_palette(num_classes)
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_classes)
    return np.where(valid[..., None], palette[np.clip(labels, 0, num_classes - 1)], 0).astype(np.uint8)

"""
Weights & Biases as an optional detectron2 event writer (``WANDB.ENABLED``), next to the console,
``metrics.json`` and TensorBoard writers: the scalars of the ``EventStorage`` (losses, learning
rate, evaluation results, median-smoothed like TensorBoard's) and its images (the panels of
:mod:`segcls.engine.visualization`) are logged with ``step`` = iteration. ``wandb`` is imported
only when enabled; it is not a dependency of segcls.
"""
from collections import defaultdict

import yaml
from detectron2.utils.events import EventWriter, get_event_storage


class WandbWriter(EventWriter):
    """Logs the storage's new scalars and images to ``run`` (a ``wandb`` run object: ``log(dict,
    step=)``, ``finish()``); ``image_fn(CHW float array in [0, 1])`` wraps an image (``wandb.Image``)."""

    def __init__(self, run, image_fn, window_size: int = 20):
        self.run = run
        self.image_fn = image_fn
        self.window_size = window_size
        self._last_write = -1
        self._last_image = -1

    @classmethod
    def from_config(cls, cfg):
        """``wandb.init`` with ``WANDB.PROJECT``/``NAME``/``MODE``, the config as the run's config and
        ``OUTPUT_DIR`` as its folder."""
        try:
            import wandb
        except ImportError:
            raise ImportError("WANDB.ENABLED True needs the 'wandb' package: pip install wandb") from None
        run = wandb.init(
            project=cfg.WANDB.PROJECT,
            name=cfg.WANDB.NAME or None,
            mode=cfg.WANDB.MODE or None,
            dir=cfg.OUTPUT_DIR or None,
            config=yaml.safe_load(cfg.dump()),
        )
        return cls(run, lambda image: wandb.Image(image.transpose(1, 2, 0)))

    def write(self):
        storage = get_event_storage()
        by_iter = defaultdict(dict)
        scalars = storage.latest_with_smoothing_hint(self.window_size)
        for key, (value, iteration) in scalars.items():
            if iteration > self._last_write:
                by_iter[iteration][key] = value
        # Images are cleared by TensorBoard's writer once written; those already logged are skipped.
        for name, image, iteration in storage._vis_data:
            if iteration > self._last_image:
                by_iter[iteration][name] = self.image_fn(image.numpy() if hasattr(image, "numpy") else image)
        for iteration in sorted(by_iter):
            self.run.log(by_iter[iteration], step=iteration)
        self._last_write = max([self._last_write] + [iteration for _, iteration in scalars.values()])
        self._last_image = max([self._last_image] + [iteration for _, _, iteration in storage._vis_data])

    def close(self):
        self.run.finish()

"""
Helpers for the tests: tiny on-disk datasets and tiny model configs, so a test trains and evaluates
in seconds on CPU. Not part of the installed package (tests import it as ``helpers``; the
directory of ``tests/conftest.py`` is on ``sys.path`` under pytest).
"""
import importlib.util
import os

import numpy as np
import torch
from PIL import Image

from segcls.data.datasets import register_sem_seg
from segcls.engine import load_config

# The repository root (tests/ lives one level below it).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.DECODE_HEAD.CHANNELS", "16",
    "MODEL.AUX_HEAD.CHANNELS", "8",
]


def write_tiny_dataset(root, num_images=4, size=(32, 40), num_classes=3, seed=0, ignore_fraction=0.05):
    """Write ``num_images`` RGB JPEGs and label PNGs (values 0..K-1 and 255) whose colour depends on
    the class, so a model can learn them. Returns (image_dir, label_dir)."""
    rng = np.random.default_rng(seed)
    image_dir, label_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    palette = rng.integers(0, 256, size=(num_classes, 3))
    h, w = size
    for i in range(num_images):
        label = np.zeros((h, w), dtype=np.uint8)
        for k in range(1, num_classes):  # random rectangles of each class
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            label[y0 : y0 + h // 2, x0 : x0 + w // 2] = k
        image = palette[label] + rng.integers(-20, 21, size=(h, w, 3))
        label[rng.random((h, w)) < ignore_fraction] = 255
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(os.path.join(image_dir, f"{i:03d}.jpg"), quality=95)
        Image.fromarray(label).save(os.path.join(label_dir, f"{i:03d}.png"))
    return image_dir, label_dir


def register_tiny_dataset(name, root, num_classes=3, **kwargs):
    """Write and register a tiny dataset under ``name`` (replacing an earlier registration)."""
    image_dir, label_dir = write_tiny_dataset(root, num_classes=num_classes, **kwargs)
    return register_dirs(name, image_dir, label_dir, num_classes)


def register_dirs(name, image_dir, label_dir, num_classes):
    """Register an image/label folder pair as dataset ``name`` (e.g. again in a spawned process);
    ``register_sem_seg`` replaces an earlier registration of the same name."""
    register_sem_seg(
        name,
        image_dir,
        label_dir,
        {"stuff_classes": [f"c{k}" for k in range(num_classes)], "ignore_label": 255, "evaluator_type": "sem_seg"},
    )
    return name


def tiny_config(output_dir, train=(), test=(), num_classes=3, opts=()):
    """A frozen tiny training config (ResNet-18 of width 8, FCN 16 channels, 32x32 crops)."""
    cfg = load_config("", tiny_opts(output_dir, train, test, num_classes, opts))
    cfg.freeze()
    return cfg


def custom_dataset_entry(name, image_dir, label_dir, num_classes=3):
    """A ``DATASETS.CUSTOM`` entry (as a command-line value) registering an image/label folder pair."""
    classes = [f"c{k}" for k in range(num_classes)]
    return str([{"NAME": name, "IMAGE_DIR": str(image_dir), "LABEL_DIR": str(label_dir), "CLASSES": classes}])


def tiny_opts(output_dir, train=(), test=(), num_classes=3, opts=()):
    """The ``KEY VALUE`` list of :func:`tiny_config` (e.g. for a ``tools/train_net.py`` command line)."""
    return (
        TINY_MODEL
        + [
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
            "DATASETS.TRAIN", str(tuple(train)),
            "DATASETS.TEST", str(tuple(test)),
            "INPUT.CROP.SIZE", "[32, 32]",
            "INPUT.RATIO_RANGE", "[0.75, 1.25]",
            "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.BASE_LR", "0.01",
            "SOLVER.MAX_ITER", "6",
            "SOLVER.CHECKPOINT_PERIOD", "3",
            "TEST.EVAL_PERIOD", "0",
            "SEED", "7",
            "OUTPUT_DIR", str(output_dir),
        ]
        + list(opts)
    )


def train_and_test_on_embedded_benchmark(root, opts=()):
    """Generates a tiny embedded benchmark (4 training, 2 + 2 test images of 48x48) under ``root``,
    trains :func:`tiny_config` with ``opts`` on it and evaluates on ``val`` and ``val_rare``.
    Returns (trainer, {split name: SemSegEvaluator metrics})."""
    from segcls.data.datasets.synthetic_context import generate_synthetic_context, register_synthetic_context
    from segcls.engine import Trainer

    generate_synthetic_context(str(root), num_train=4, num_val=2, num_val_rare=2, image_size=48)
    register_synthetic_context(str(root))
    splits = ["synthetic_context_val", "synthetic_context_val_rare"]
    cfg = tiny_config(
        os.path.join(str(root), "out"),
        train=["synthetic_context_train"],
        test=splits,
        num_classes=11,
        opts=list(opts) + ["TEST.NUM_OVERLAYS", "0"],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    return trainer, {name: results[name]["sem_seg"] for name in splits}


def save_random_model(cfg, folder):
    """Save a freshly initialised (seed 0) model of ``cfg`` as ``folder/model.pth``; returns the path."""
    from detectron2.checkpoint import DetectionCheckpointer
    from segcls.engine import Trainer

    torch.manual_seed(0)
    DetectionCheckpointer(Trainer.build_model(cfg), save_dir=str(folder)).save("model")
    return os.path.join(str(folder), "model.pth")


def tiny_batch(seed=0, with_labels=True, num_classes=4, ignore_value=255):
    """Two uint8 images of different sizes (40x48, 36x44) as model inputs, with random labels in
    [0, num_classes) whose top 4 rows are ``ignore_value`` (``with_labels``)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in ((40, 48), (36, 44)):
        item = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)}
        if with_labels:
            label = torch.randint(0, num_classes, (h, w), generator=g)
            label[:4] = ignore_value
            item["sem_seg"] = label
        batch.append(item)
    return batch


def load_script(relative_path):
    """Import a repository script (e.g. ``"tools/analyze_model.py"``) as a module, to call its functions."""
    name = os.path.splitext(os.path.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ImageToLogits(torch.nn.Module):
    """(3, H, W) image -> the model's inference logits, for fvcore's tracer."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model([{"image": image}])[0]["sem_seg"]


def randomize(module, seed=0):
    """Every parameter and BN statistic of ``module`` random, in place (He-scaled conv weights, norm
    scales around 1, positive variances: activations neither vanish nor explode), for comparisons
    after weight transfer; returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            r = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if "running_var" in name:
                r = torch.rand(t.shape, generator=g, dtype=t.dtype) * 0.5 + 0.75
            elif t.dim() > 1:
                r = r * (2.0 / t[0].numel()) ** 0.5
            elif name.endswith("weight"):
                r = 1 + 0.2 * r
            else:
                r = 0.1 * r
            t.copy_(r)
    return module


def float64_segmentor(opts, num_classes):
    """A segcls model in float64 and eval mode on identity normalisation (PIXEL_MEAN 0, PIXEL_STD 1:
    its input is the tensor a peer model gets)."""
    from detectron2.modeling import build_model

    base = ["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
            "MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]  # fmt: skip
    return build_model(load_config(opts=base + list(opts))).double().eval()


def timm_model_kwargs(monkeypatch, **model_kwargs):
    """Make ``build_timm_backbone`` pass ``model_kwargs`` to ``timm.create_model`` (no config key
    sets a timm model's widths or depths; e.g. a narrow Swin keeps the converter tests fast)."""
    from segcls.modeling.backbone import timm_backbone

    class Narrow(timm_backbone.TimmBackbone):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, model_kwargs=model_kwargs, **kwargs)

    monkeypatch.setattr(timm_backbone, "TimmBackbone", Narrow)

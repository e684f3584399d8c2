"""PerPixelSegmentor: detectron2's SemanticSegmentor contract in training and inference."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from segcls.engine import load_config
from helpers import TINY_MODEL


def _model(*opts, num_classes=5):
    cfg = load_config("", TINY_MODEL + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes)] + list(opts))
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(sizes, num_classes=5, with_labels=True):
    out = []
    for h, w in sizes:
        d = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8)}
        if with_labels:
            d["sem_seg"] = torch.randint(0, num_classes, (h, w))
        out.append(d)
    return out


def test_training_returns_scalar_losses_including_aux():
    model = _model("MODEL.AUX_HEAD.ENABLED", "True", "MODEL.RESNETS.OUT_FEATURES", "['res4', 'res5']")
    model.train()
    with EventStorage():
        losses = model(_batch([(33, 41), (30, 45)]))
    assert set(losses) == {"loss_ce", "loss_aux_ce"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.aux_head.tail.conv.weight.grad is not None


def test_inference_returns_logits_at_requested_size():
    model = _model().eval()
    batch = _batch([(33, 41), (30, 45)], with_labels=False)
    batch[1]["height"], batch[1]["width"] = 60, 90
    with torch.no_grad():
        out = model(batch)
    assert out[0]["sem_seg"].shape == (5, 33, 41)
    assert out[1]["sem_seg"].shape == (5, 60, 90)


def test_padding_to_size_divisibility_pads_labels_with_ignore():
    model = _model("INPUT.SIZE_DIVISIBILITY", "32")
    images, targets = model.preprocessor(_batch([(33, 41), (30, 45)]))
    assert images.tensor.shape[-2:] == (64, 64)
    assert images.image_sizes == [(33, 41), (30, 45)]
    assert (targets[0, 33:] == 255).all() and (targets[0, :, 41:] == 255).all()
    assert (targets[1, :30, :45] < 5).all()


def test_training_without_labels_is_an_error():
    model = _model().train()
    with pytest.raises(ValueError, match="sem_seg"):
        model(_batch([(16, 16)], with_labels=False))


def test_all_ignored_batch_gives_finite_zero_loss():
    model = _model().train()
    batch = _batch([(16, 16)])
    batch[0]["sem_seg"][:] = 255
    with EventStorage():
        losses = model(batch)
    assert losses["loss_ce"].item() == 0.0
    sum(losses.values()).backward()


def test_loss_weights_must_match_losses():
    with pytest.raises(ValueError, match="weight"):
        _model("MODEL.DECODE_HEAD.LOSS_WEIGHTS", "[1.0, 2.0]")

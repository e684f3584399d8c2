"""
PerPixelSegmentor's inference modes: whole image, sliding window (mmsegmentation's mode='slide')
and multi-scale + flip test-time augmentation, on a tiny model with output stride 4 (so that
padding to the size divisibility and logit upsampling are exercised).
"""
import pytest
import torch
from helpers import TINY_MODEL
from detectron2.modeling import build_model
from torch import nn

from segcls.engine import load_config

from segcls.modeling.classifiers import LinearClassifier
from segcls.modeling.meta_arch.per_pixel import PerPixelSegmentor
from segcls.modeling.losses import PixelLossSet
from segcls.modeling.meta_arch.inference import InferenceOptions
from segcls.modeling.outputs import SegOutputs

K = 5


class TinyBackbone(nn.Module):
    """Two stride-2 convolutions: output stride 4, size divisibility 4."""

    size_divisibility = 4

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return {"res5": self.body(x)}


class TinyHead(nn.Module):
    out_channels = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, features, targets=None):
        return SegOutputs(pixel_feature=self.conv(features["res5"]))


def tiny_model(**inference_options):
    """A PerPixelSegmentor with a tiny backbone and head; ``inference_options``: InferenceOptions' fields."""
    torch.manual_seed(0)
    model = PerPixelSegmentor(
        backbone=TinyBackbone(),
        decode_head=TinyHead(),
        classifier=LinearClassifier(in_channels=8, num_classes=K, dropout=0.0),
        loss=PixelLossSet([], []),
        num_classes=K,
        pixel_mean=[120.0, 115.0, 100.0],
        pixel_std=[60.0, 58.0, 57.0],
        inference=InferenceOptions(**inference_options),
    )
    nn.init.normal_(model.classifier.conv.weight, std=1.0)  # logits of a useful magnitude
    return model.eval()


def random_image(height, width, seed=0):
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@torch.no_grad()
def infer(model, image, **size):
    return model([{"image": image, **size}])[0]["sem_seg"]


def test_whole_image_output_shape_and_output_size():
    model = tiny_model()
    image = random_image(30, 42)  # not a multiple of 4: padded inside the model
    assert infer(model, image).shape == (K, 30, 42)
    assert infer(model, image, height=60, width=84).shape == (K, 60, 84)


def test_slide_with_one_window_covering_the_image_equals_whole():
    image = random_image(30, 42)
    whole = infer(tiny_model(), image)
    for crop in ([30, 42], [32, 48], [64, 64]):
        slide = infer(tiny_model(mode="slide", crop_size=crop, stride=[16, 16]), image)
        assert torch.equal(slide, whole)


def slow_slide_reference(image, crop, stride):
    """Every window (rows at 0, stride, 2*stride, ... while the window still starts inside the image,
    the last one moved back to end at the border; columns alike) predicted as a whole image on its
    own; logits summed per pixel and divided by the number of windows covering it."""
    model = tiny_model()
    _, height, width = image.shape
    starts_y = sorted({min(y, max(height - crop[0], 0)) for y in range(0, max(height - crop[0], 0) + stride[0], stride[0])})
    starts_x = sorted({min(x, max(width - crop[1], 0)) for x in range(0, max(width - crop[1], 0) + stride[1], stride[1])})
    total, count = torch.zeros(K, height, width), torch.zeros(height, width)
    for y in starts_y:
        for x in starts_x:
            window = image[:, y : y + crop[0], x : x + crop[1]]
            total[:, y : y + crop[0], x : x + crop[1]] += infer(model, window)
            count[y : y + crop[0], x : x + crop[1]] += 1
    assert count.min() >= 1 and count.max() > 1  # the windows cover the image and overlap
    return total / count


@pytest.mark.parametrize("crop, stride", [([16, 24], [8, 16]), ([20, 20], [20, 12]), ([14, 16], [9, 11])])
def test_overlapping_slide_equals_slow_reference(crop, stride):
    image = random_image(33, 45, seed=1)
    slide = infer(tiny_model(mode="slide", crop_size=crop, stride=stride), image)
    torch.testing.assert_close(slide, slow_slide_reference(image, crop, stride), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(slide, infer(tiny_model(), image), atol=1e-3)  # windows do change the result


@pytest.mark.parametrize("slide_batch", [2, 4, 100])
def test_batched_slide_equals_window_by_window(slide_batch):
    """TEST.SLIDE_BATCH windows per forward (the last batch shorter): same logits as one window
    at a time, float32."""
    image = random_image(33, 45, seed=2)
    crop, stride = [14, 16], [9, 11]  # 4 x 4 windows
    one = infer(tiny_model(mode="slide", crop_size=crop, stride=stride), image)
    batched = infer(tiny_model(mode="slide", crop_size=crop, stride=stride, slide_batch=slide_batch), image)
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, slow_slide_reference(image, crop, stride), rtol=1e-5, atol=1e-5)


def test_batched_slide_calls_the_network_once_per_batch():
    model = tiny_model(mode="slide", crop_size=[14, 16], stride=[9, 11], slide_batch=5)
    batches = []
    model.backbone.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    infer(model, random_image(33, 45))
    assert batches == [5, 5, 5, 1]  # 16 windows


def test_tta_with_scale_one_and_no_flip_equals_plain_inference():
    image = random_image(30, 42)
    plain = infer(tiny_model(), image)
    tta = infer(tiny_model(tta_scales=[1.0], tta_flip=False), image)
    assert torch.equal(tta, plain.softmax(0))  # TTA averages probabilities: here of one prediction
    assert torch.equal(tta.argmax(0), plain.argmax(0))


def test_tta_flip_averages_the_flipped_prediction():
    image = random_image(28, 40)
    model = tiny_model()
    expected = (infer(model, image).softmax(0) + infer(model, image.flip(-1)).flip(-1).softmax(0)) / 2
    tta = infer(tiny_model(tta_scales=[1.0], tta_flip=True), image)
    torch.testing.assert_close(tta, expected)


def test_multi_scale_tta_returns_probabilities_at_output_size():
    image = random_image(28, 40)
    for test_mode in ("whole", "slide"):
        model = tiny_model(mode=test_mode, crop_size=[16, 16], stride=[12, 12], tta_scales=[0.5, 1.75], tta_flip=True)
        probs = infer(model, image, height=14, width=20)
        assert probs.shape == (K, 14, 20)
        torch.testing.assert_close(probs.sum(0), torch.ones(14, 20))


META_ARCHITECTURES = {
    "PerPixelSegmentor": [],
    "ECENet": ["MODEL.META_ARCHITECTURE", "ECENet", "MODEL.RESNETS.OUTPUT_STRIDE", "32", "MODEL.ECENET.EMBED_DIM", "32"],
}


@pytest.mark.parametrize("meta_architecture", META_ARCHITECTURES)
def test_meta_architectures_take_inference_modes_from_config(meta_architecture):
    """Both meta-architectures share the inference modes (SemSegIOMixin) and read them from TEST.*."""
    cfg = load_config("", TINY_MODEL + META_ARCHITECTURES[meta_architecture] + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(K)])
    cfg.merge_from_list(["TEST.MODE", "slide", "TEST.CROP_SIZE", "[40, 56]", "TEST.STRIDE", "[16, 24]"])
    torch.manual_seed(0)
    slide = build_model(cfg).eval()
    assert slide.inferencer.options == InferenceOptions("slide", (40, 56), (16, 24), (), True)
    cfg.merge_from_list(["TEST.MODE", "whole"])
    whole = build_model(cfg).eval()
    whole.load_state_dict(slide.state_dict())
    image = random_image(40, 56)
    torch.testing.assert_close(infer(slide, image), infer(whole, image), rtol=0, atol=0)  # one window = whole image
    cfg.merge_from_list(["TEST.AUG.ENABLED", "True", "TEST.AUG.FLIP", "False"])
    assert build_model(cfg).inferencer.options == InferenceOptions(
        "whole", (40, 56), (16, 24), (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), False
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "sliding"}, "must be 'whole' or 'slide'"),
        ({"mode": "slide", "crop_size": [16, 16], "stride": [20, 8]}, "0 < stride <= crop size"),
        ({"tta_scales": [1.0, 0.0]}, "must be positive"),
        ({"mode": "slide", "slide_batch": 0}, "TEST.SLIDE_BATCH must be >= 1"),
    ],
)
def test_bad_inference_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**options)

"""
The fast path (segcls.modeling.precision): bf16 autocast of every method's training losses against
float32, channels-last and torch.compile against the plain model, the float32 islands, and the
trainer's choice of step loop. CUDA-only paths are skipped without a GPU.
"""
import logging
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import REPO, tiny_batch

from segcls.engine import load_config
from segcls.engine.trainer import build_train_loop
from segcls.modeling.precision import FastPath, FastPathOptions, float32

CONFIGS = os.path.join(REPO, "configs", "synthetic_context")
METHODS = ["fcn_r18_demo", "fcn_r18_car", "fcn_r18_cac", "fcn_r18_csfrn", "ecenet_r18"]
NUM_CLASSES = 4
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%); through an 18-layer network at
# random initialisation each loss term stays within 5% (+ 0.02 absolute) of its float32 value.
REL_TOL, ABS_TOL = 0.05, 0.02


def build(method, opts=(), seed=0):
    cfg = load_config(
        os.path.join(CONFIGS, method + ".yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES), "MODEL.CLASSIFIER.DROPOUT", "0.0"]
        + list(opts),
    )
    torch.manual_seed(seed)
    return build_model(cfg)


def training_losses(model, batch):
    model.train()
    torch.manual_seed(1)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    model.zero_grad()
    total.backward()
    return {k: v.item() for k, v in losses.items()}, [p.grad for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("method", METHODS)
def test_bf16_training_losses_match_float32(method):
    batch = tiny_batch(num_classes=NUM_CLASSES)
    ref, _ = training_losses(build(method), batch)
    fast, grads = training_losses(build(method, ["SOLVER.AMP.ENABLED", "True", "MODEL.CHANNELS_LAST", "True"]), batch)
    assert fast.keys() == ref.keys() and len(ref) >= 1
    for name in ref:
        assert abs(fast[name] - ref[name]) <= REL_TOL * abs(ref[name]) + ABS_TOL, (name, fast[name], ref[name])
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_channels_last_gives_the_same_float32_outputs():
    batch = tiny_batch(num_classes=NUM_CLASSES)
    plain, fast = build("fcn_r18_demo"), build("fcn_r18_demo", ["MODEL.CHANNELS_LAST", "True"])
    conv = fast.backbone.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    ref, _ = training_losses(plain, batch)
    out, _ = training_losses(fast, batch)
    assert out == pytest.approx(ref, rel=1e-5, abs=1e-6)
    with torch.no_grad():
        for a, b in zip(plain.eval()(batch), fast.eval()(batch)):
            torch.testing.assert_close(b["sem_seg"], a["sem_seg"], rtol=1e-4, atol=1e-4)


def test_bf16_inference_returns_float32_scores_with_the_same_labels():
    batch = tiny_batch(with_labels=False)
    plain, fast = build("fcn_r18_demo").eval(), build("fcn_r18_demo", ["TEST.AMP.ENABLED", "True"]).eval()
    with torch.no_grad():
        ref, out = plain(batch), fast(batch)
    for a, b in zip(ref, out):
        assert b["sem_seg"].dtype == torch.float32 and b["sem_seg"].shape == a["sem_seg"].shape
        assert not torch.equal(a["sem_seg"], b["sem_seg"])  # it did run in bf16
        agree = (a["sem_seg"].argmax(0) == b["sem_seg"].argmax(0)).float().mean().item()
        assert agree > 0.9


def test_float32_island_disables_autocast_and_casts_half_arguments():
    seen = {}

    @float32
    def island(x, y, scale=1.0, *, z):
        seen.update(dtypes=(x.dtype, y.dtype, z.dtype), autocast=torch.is_autocast_enabled("cpu"))
        return (x @ y) * scale + z

    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = island(x.bfloat16(), x, 2.0, z=x.bfloat16())
    assert out.dtype == torch.float32 and seen == {"dtypes": (torch.float32,) * 3, "autocast": False}
    assert seen["autocast"] is False
    double = torch.randn(3, 3, dtype=torch.float64)
    assert island(double, double, z=double).dtype == torch.float64  # not a half type: untouched


def test_compile_gives_the_same_outputs_and_falls_back_with_a_message(caplog):
    batch = tiny_batch(with_labels=False)
    plain = build("fcn_r18_demo").eval()
    compiled = build("fcn_r18_demo", ["MODEL.COMPILE.ENABLED", "True", "MODEL.COMPILE.BACKEND", "aot_eager"]).eval()
    with torch.no_grad():
        for a, b in zip(plain(batch), compiled(batch)):
            torch.testing.assert_close(b["sem_seg"], a["sem_seg"], rtol=1e-4, atol=1e-4)
    assert "logits" in compiled.fast_path._compiled

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    failing = build("fcn_r18_demo").eval()
    failing.fast_path = FastPath(FastPathOptions(compile=True, compile_backend=broken_backend))
    with caplog.at_level(logging.WARNING, logger="segcls.modeling.precision"), torch.no_grad():
        for a, b in zip(plain(batch), failing(batch)):
            torch.testing.assert_close(b["sem_seg"], a["sem_seg"])
    assert "torch.compile" in caplog.text and "running it eagerly" in caplog.text and "no compiler here" in caplog.text


def test_bad_precision_is_rejected_with_the_key():
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION='half'"):
        build("fcn_r18_demo", ["SOLVER.AMP.PRECISION", "half"])


def test_train_loop_choice():
    from detectron2.engine import AMPTrainer, SimpleTrainer

    model = build("fcn_r18_demo")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [tiny_batch(num_classes=NUM_CLASSES)]

    def cfg(*opts):
        return load_config(os.path.join(CONFIGS, "fcn_r18_demo.yaml"), ["MODEL.DEVICE", "cpu", *opts])

    bf16 = build_train_loop(cfg("SOLVER.AMP.ENABLED", "True"), "cpu", model, loader, opt)
    assert type(bf16) is SimpleTrainer
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION='float16'.*CUDA only.*bfloat16"):
        build_train_loop(cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16"), "cpu", model, loader, opt)
    if torch.cuda.is_available():
        fp16 = build_train_loop(cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16"), "cuda", model, loader, opt)
        assert isinstance(fp16, AMPTrainer) and "grad_scaler" in fp16.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_cuda_amp_training_losses_match_float32(precision):
    batch = tiny_batch(num_classes=NUM_CLASSES)
    ref, _ = training_losses(build("fcn_r18_demo", ["MODEL.DEVICE", "cuda"]), batch)
    opts = ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision, "MODEL.CHANNELS_LAST", "True"]
    fast, grads = training_losses(build("fcn_r18_demo", opts), batch)
    for name in ref:
        assert abs(fast[name] - ref[name]) <= REL_TOL * abs(ref[name]) + ABS_TOL, (name, fast[name], ref[name])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("size", [(16, 16), (7, 13)])
def test_global_average_pooling_equals_adaptive_pooling_bitwise(dtype, size):
    from torch.nn import functional as F

    from segcls.modeling.layers import adaptive_avg_pool2d

    x = torch.randn(2, 40, *size, generator=torch.Generator().manual_seed(0)).to(dtype)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        for output_size in (1, (1, 1), 3):
            assert torch.equal(adaptive_avg_pool2d(layout, output_size), F.adaptive_avg_pool2d(layout, output_size))


@pytest.mark.parametrize("head", ["ASPPHead", "PSPHead"])
def test_pooling_branches_keep_channels_last(head):
    """The image-pooling / pyramid branches are concatenated with the features: channels-last in,
    channels-last concatenation out (no contiguous fallback), the same numbers as contiguous."""
    from segcls.modeling.heads.blocks import ImagePooling, PyramidPooling

    torch.manual_seed(0)
    block = (ImagePooling(8, 4) if head == "ASPPHead" else PyramidPooling(8, 4, [1, 2, 3])).eval()
    x = torch.randn(2, 8, 9, 11)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, out_cl = block(x), block.to(memory_format=torch.channels_last)(x_cl)
    joined = torch.cat([x_cl, out_cl], dim=1)
    assert joined.is_contiguous(memory_format=torch.channels_last) and not joined.is_contiguous()
    torch.testing.assert_close(out_cl, out, rtol=1e-6, atol=1e-6)

"""
segcls equals HF ``UperNetForSemanticSegmentation`` after conversion (float64, every parameter and
BN statistic random): with a ConvNeXt backbone, ``build_timm_backbone`` with timm's
``convnext_atto`` (the same depths and widths as the HF config below); with a Swin backbone, timm's
Swin-T narrowed to the HF config's widths, depths and heads (``helpers.timm_model_kwargs``); both
with ``MODEL.TIMM.OUT_NORM`` (HF's ``hidden_states_norms``), ``UPerHead`` and the auxiliary FCN
head. Also: the normal suite's hand-written key layouts are those of these modules and of the
files they write. ``pytest -m peers``.
"""
import pytest
import torch

from segcls.converters import convert_state_dict, read_checkpoint
from helpers import float64_segmentor, load_script, randomize, timm_model_kwargs

pytestmark = pytest.mark.peers
K, CH, AUX_CH = 5, 16, 8
LAYOUTS = load_script("tests/modeling/test_converters.py")  # the normal suite's key layouts
SWIN = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=7)  # = LAYOUTS.TINY_SWIN
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def hf_upernet(transformers, backbone, dtype=torch.float64):
    """HF's UperNet with ``backbone`` ("convnext": ConvNeXt-atto widths and depths; "swin": the
    narrow Swin), random weights, eval mode."""
    backbone_config = (
        transformers.ConvNextConfig(hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], out_features=STAGES)
        if backbone == "convnext"
        else transformers.SwinConfig(**SWIN, out_features=STAGES)
    )
    config = transformers.UperNetConfig(backbone_config=backbone_config, hidden_size=CH, auxiliary_channels=AUX_CH,
                                        num_labels=K, use_auxiliary_head=True)  # fmt: skip
    return randomize(transformers.UperNetForSemanticSegmentation(config)).to(dtype).eval()


def logits(model, x):
    with torch.no_grad():
        return torch.stack([model([{"image": img}])[0]["sem_seg"] for img in x])


def assert_equal_after_conversion(peer, model, size, unused=()):
    """Convert ``peer``'s state dict onto ``model`` (every model tensor filled, only ``unused``
    left), load it and compare the logits on a random (2, 3, size, size) batch to 1e-10 of their
    scale; returns (x, the peer's logits)."""
    conversion = convert_state_dict(peer.state_dict(), model, "hf")
    assert conversion.layout == "hf_upernet" and conversion.unused == sorted(unused)
    assert set(conversion.tensors) == set(model.state_dict())
    model.load_state_dict(conversion.tensors)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = peer(pixel_values=x).logits
    assert expected.abs().max() > 1
    torch.testing.assert_close(logits(model, x), expected, rtol=0, atol=1e-10 * expected.abs().max())
    return x, expected


def test_hf_upernet_convnext_equals_segcls_after_conversion(transformers):
    peer = hf_upernet(transformers, "convnext")
    model = float64_segmentor(LAYOUTS.UPERNET_CONVNEXT_ATTO, K)
    x, expected = assert_equal_after_conversion(peer, model, 64)
    # without the four output norms the same weights compute other logits
    model.backbone.out_norms = None
    assert (logits(model, x) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("size", [224, 64])
def test_hf_upernet_swin_equals_segcls_after_conversion(transformers, monkeypatch, tmp_path, size):
    """224x224: stages of 56, 28, 14 and 7, multiples of the window (7); 64x64: 16, 8, 4 and 2,
    padded to the window before the shift. transformers 5.x's SwinBackbone partitions and shifts
    every block whatever the map's size (``always_partition``), as the official Swin and segcls.
    HF's patch merging concatenates the 2x2 neighbours in timm's order: no permutation (with
    mmseg's, the logits differ everywhere). The file ``save_pretrained`` writes (transformers 4.x
    names) converts to the same tensors."""
    timm_model_kwargs(monkeypatch, **LAYOUTS.TINY_SWIN)
    peer = hf_upernet(transformers, "swin")
    model = float64_segmentor(LAYOUTS.UPERNET_SWIN, K)
    unused = ["backbone.swin.layernorm.weight", "backbone.swin.layernorm.bias"]  # not in SwinBackbone's forward
    x, expected = assert_equal_after_conversion(peer, model, size, unused)
    peer.save_pretrained(str(tmp_path))
    from_file = convert_state_dict(read_checkpoint(str(tmp_path)), model, "hf").tensors
    from_module = convert_state_dict(peer.state_dict(), model, "hf").tensors
    assert from_file.keys() == from_module.keys() and all(torch.equal(from_file[k], from_module[k]) for k in from_file)
    # without the four output norms the same weights compute other logits
    model.backbone.out_norms = None
    assert (logits(model, x) - expected).abs().max() > 1e-3


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_normal_suite_layouts_are_the_real_modules_and_files(transformers, tmp_path):
    convnext = hf_upernet(transformers, "convnext", torch.float32)
    assert shapes(convnext.state_dict()) == LAYOUTS.hf_upernet_convnext()
    swin = hf_upernet(transformers, "swin", torch.float32)
    assert shapes(swin.state_dict()) == LAYOUTS.hf_upernet_swin(file_names=False)
    swin.save_pretrained(str(tmp_path))
    assert shapes(read_checkpoint(str(tmp_path))) == LAYOUTS.hf_upernet_swin(file_names=True)

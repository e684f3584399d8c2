"""
segcls equals HF ``UperNetForSemanticSegmentation`` with a ConvNeXt backbone after conversion
(float64, every parameter and BN statistic random): ``build_timm_backbone`` with timm's
``convnext_atto`` (the same depths and widths as the HF config below), ``MODEL.TIMM.OUT_NORM``
(HF's ``hidden_states_norms``), ``UPerHead`` and the auxiliary FCN head. ``pytest -m peers``.
"""
import pytest
import torch

from segcls.converters import convert_state_dict
from helpers import float64_segmentor, randomize

pytestmark = pytest.mark.peers
K, CH, AUX_CH = 5, 16, 8


def test_hf_upernet_convnext_equals_segcls_after_conversion(transformers):
    config = transformers.UperNetConfig(
        backbone_config=transformers.ConvNextConfig(
            hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], out_features=["stage1", "stage2", "stage3", "stage4"]
        ),
        hidden_size=CH, auxiliary_channels=AUX_CH, num_labels=K, use_auxiliary_head=True,
    )  # fmt: skip
    peer = randomize(transformers.UperNetForSemanticSegmentation(config)).double().eval()
    model = float64_segmentor(
        ["MODEL.BACKBONE.NAME", "build_timm_backbone", "MODEL.TIMM.NAME", "convnext_atto", "MODEL.TIMM.OUT_NORM", "True",
         "MODEL.DECODE_HEAD.NAME", "UPerHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]',
         "MODEL.DECODE_HEAD.CHANNELS", CH, "MODEL.AUX_HEAD.ENABLED", "True", "MODEL.AUX_HEAD.CHANNELS", AUX_CH],
        K,
    )  # fmt: skip
    conversion = convert_state_dict(peer.state_dict(), model, "hf")
    assert conversion.layout == "hf_upernet" and conversion.unused == []
    assert set(conversion.tensors) == set(model.state_dict())
    model.load_state_dict(conversion.tensors)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = peer(pixel_values=x).logits
        got = torch.stack([model([{"image": img}])[0]["sem_seg"] for img in x])
    assert expected.abs().max() > 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * expected.abs().max())
    # without the four output norms the same weights compute other logits
    model.backbone.out_norms = None
    with torch.no_grad():
        assert (torch.stack([model([{"image": img}])[0]["sem_seg"] for img in x]) - expected).abs().max() > 1e-3

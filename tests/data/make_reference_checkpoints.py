"""
Writes ``reference_checkpoints.pth``: tiny models of every decode head (with an auxiliary head),
CAC, CAR and ECENet, each with its state dict, a fixed input batch, its inference output and its
training losses. Uses only detectron2's external model contract (``model(list[dict])``), so the
same script runs on any segcls version; ``tests/test_checkpoint_compat.py`` checks that a model
built by today's code loads each state dict and computes the same numbers.

The committed file was written by the code before the typed output contract (commit f6a6102):
``python tests/data/make_reference_checkpoints.py``.
"""
import os

import torch
from detectron2.modeling import build_model

from segcls.engine.defaults import load_config

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES = 4
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "4",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "4",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
    "MODEL.DECODE_HEAD.CHANNELS", "8",
    "MODEL.AUX_HEAD.ENABLED", "True",
    "MODEL.AUX_HEAD.CHANNELS", "8",
]  # fmt: skip
CASES = {
    "fcn": [],
    "fcn_projection_a": ["MODEL.DECODE_HEAD.REG_PROJECTION", "True", "MODEL.DECODE_HEAD.LAST_CONV_KERNEL", "1"],
    "aspp": ["MODEL.DECODE_HEAD.NAME", "ASPPHead"],
    "ksac": ["MODEL.DECODE_HEAD.NAME", "KSACHead"],
    "deeplabv3plus": [
        "MODEL.DECODE_HEAD.NAME", "DeepLabV3PlusHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res5"]',
        "MODEL.DECODE_HEAD.DEEPLABV3PLUS.LOW_LEVEL_CHANNELS", "8",
    ],
    "psp": ["MODEL.DECODE_HEAD.NAME", "PSPHead"],
    "upernet": ["MODEL.DECODE_HEAD.NAME", "UPerHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res2", "res3", "res4", "res5"]'],
    "caa": ["MODEL.DECODE_HEAD.NAME", "CAAHead", "MODEL.DECODE_HEAD.CAA.KEY_CHANNELS", "8", "MODEL.DECODE_HEAD.CAA.OUT_CHANNELS", "8"],
    "nonlocal": ["MODEL.DECODE_HEAD.NAME", "NonLocalHead"],
    "danet": ["MODEL.DECODE_HEAD.NAME", "DAHead", "MODEL.AUX_HEAD.NAME", "DAHead"],
    "ccnet": ["MODEL.DECODE_HEAD.NAME", "CCHead"],
    "ocr": [
        "MODEL.DECODE_HEAD.NAME", "OCRHead", "MODEL.DECODE_HEAD.IN_FEATURES", '["res4", "res5"]',
        "MODEL.DECODE_HEAD.OCR.KEY_CHANNELS", "4", "MODEL.DECODE_HEAD.OCR.COARSE_CHANNELS", "8",
    ],
    "cpnet": ["MODEL.DECODE_HEAD.NAME", "CPHead", "MODEL.DECODE_HEAD.CPNET.PRIOR_SIZE", "4", "MODEL.DECODE_HEAD.CPNET.AGGREGATION_KERNEL", "3"],
    "cac": ["MODEL.CLASSIFIER.NAME", "ContextAwareClassifier"],
    "car": ["MODEL.REGULARIZERS.NAMES", '["CARRegularizer"]', "MODEL.DECODE_HEAD.REG_PROJECTION", "True"],
    "ecenet": [
        "MODEL.META_ARCHITECTURE", "ECENet", "MODEL.AUX_HEAD.ENABLED", "False", "MODEL.RESNETS.OUTPUT_STRIDE", "32",
        "MODEL.ECENET.EMBED_DIM", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    ],
}  # fmt: skip


def batch(seed=0, size=(32, 40)):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(2):
        label = torch.randint(0, NUM_CLASSES, (size[0] // 8, size[1] // 8), generator=g)
        label = label.repeat_interleave(8, 0).repeat_interleave(8, 1)
        label[torch.rand(size, generator=g) < 0.1] = 255
        inputs.append({"image": torch.rand(3, *size, generator=g) * 255, "sem_seg": label})
    return inputs


def build(name):
    torch.manual_seed(0)
    return build_model(load_config(opts=TINY + CASES[name]))


def run(model, inputs):
    """(inference outputs (N, K, H, W), training losses {name: float}) of ``model``; every
    dropout is switched off so the numbers do not depend on RNG consumption order."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    model.eval()
    with torch.no_grad():
        outputs = torch.stack([o["sem_seg"] for o in model(inputs)])
    model.train()
    losses = {k: float(v.detach()) for k, v in model(inputs).items()}
    return outputs, losses


def main():
    torch.set_num_threads(1)
    inputs = batch()
    out = {"inputs": inputs, "cases": {}}
    for name in CASES:
        model = build(name)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        outputs, losses = run(model, inputs)
        out["cases"][name] = {"opts": TINY + CASES[name], "state_dict": state, "outputs": outputs, "losses": losses}
        print(name, sorted(losses))
    torch.save(out, os.path.join(HERE, "reference_checkpoints.pth"))


if __name__ == "__main__":
    main()

"""The example fork: its head and loss are picked from its yaml and train, without segcls/ edits."""
import os

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from segcls.engine import load_config
from se_fcn import LabelSmoothingCrossEntropyLoss, SEHead, add_se_fcn_config

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "se_fcn_r18_synthetic.yaml")
TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
        "MODEL.DECODE_HEAD.CHANNELS", "16"]


def test_fork_config_builds_its_head_and_loss_and_trains():
    cfg = load_config(CONFIG, TINY, add_config_fns=[add_se_fcn_config])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.decode_head, SEHead)
    assert isinstance(model.criterion.default.losses[0], LabelSmoothingCrossEntropyLoss)
    batch = [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), "sem_seg": torch.randint(0, 11, (32, 32))}]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with EventStorage():
        first = model(batch)["loss_ce_ls"].item()
        for _ in range(10):
            optimizer.zero_grad()
            model(batch)["loss_ce_ls"].backward()
            optimizer.step()
        last = model(batch)["loss_ce_ls"].item()
    assert last < first


def test_label_smoothing_loss_matches_its_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    targets = torch.randint(0, 4, (2, 3, 3))
    targets[0, 0, 0] = 255
    loss = LabelSmoothingCrossEntropyLoss(ignore_value=255, label_smoothing=0.2)(logits, targets)
    logp = F.log_softmax(logits, dim=1)
    terms = []
    for n in range(2):
        for i in range(3):
            for j in range(3):
                y = int(targets[n, i, j])
                if y != 255:
                    target = torch.full((4,), 0.2 / 4, dtype=torch.float64)
                    target[y] += 0.8
                    terms.append(-(target * logp[n, :, i, j]).sum())
    assert torch.allclose(loss, torch.stack(terms).mean())

#!/usr/bin/env python
"""
Train and/or evaluate a segcls model.

    python tools/train_net.py --config-file configs/synthetic_context/fcn_r18_demo.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume            # continue from OUTPUT_DIR
    python tools/train_net.py --config-file CFG --overwrite         # restart in a used OUTPUT_DIR
    python tools/train_net.py --config-file CFG --num-gpus 8        # 8 GPUs (nccl)
    python tools/train_net.py --config-file CFG --num-gpus 2 --dist-backend gloo MODEL.DEVICE cpu

Evaluation results go to OUTPUT_DIR/eval/results.json and overlays to OUTPUT_DIR/eval/<dataset>/overlays/.
Flags go before the trailing KEY VALUE overrides. Ctrl-C (SIGINT/SIGTERM) saves the last completed
iteration as model_<iter>_interrupted.pth; --resume continues from it.
"""
import segcls  # noqa: F401  (registers datasets and modules)
from segcls.engine import train_net_cli

if __name__ == "__main__":
    train_net_cli()

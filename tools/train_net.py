#!/usr/bin/env python
"""
Train and/or evaluate a segcls model.

    python tools/train_net.py --config-file configs/synthetic_context/fcn_r18_demo.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume            # continue from OUTPUT_DIR
    python tools/train_net.py --config-file CFG --num-gpus 8        # 8 GPUs (nccl)
    python tools/train_net.py --config-file CFG --num-gpus 2 --dist-backend gloo MODEL.DEVICE cpu

Evaluation results go to OUTPUT_DIR/eval/metrics.json (and overlays to OUTPUT_DIR/eval/<dataset>/overlays).
"""
from detectron2.checkpoint import DetectionCheckpointer

import segcls  # noqa: F401  (registers datasets and modules)
from segcls.engine import Trainer, default_argument_parser, launch, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=args.dist_backend,
    )


if __name__ == "__main__":
    cli()

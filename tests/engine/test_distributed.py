"""Several CPU processes over gloo (segcls.engine.launch): DDP training and gathered evaluation
give the same results as one process."""
import json

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog

from segcls.engine import Trainer, launch
from helpers import register_dirs, register_tiny_dataset, tiny_config


def _worker(cfg, name, image_dir, label_dir):
    from detectron2.utils import comm

    register_dirs(name, image_dir, label_dir, 3)
    assert comm.get_world_size() == 2 and comm.get_local_size() == 2
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Evaluate as `--eval-only --num-gpus 2` does: every rank loads the saved weights (BN running
    # statistics are per rank during DDP training), each evaluates its shard, rank 0 gathers.
    comm.synchronize()
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(cfg.OUTPUT_DIR) + "/model_final.pth")
    Trainer.test(cfg, model)


def test_two_gloo_processes_train_and_gather_evaluation(tmp_path):
    name = register_tiny_dataset("segcls_test_ddp", str(tmp_path / "data"), num_images=6)
    meta = MetadataCatalog.get(name)
    cfg = tiny_config(tmp_path / "out", train=[name], test=[name], opts=["SOLVER.MAX_ITER", "2"])
    launch(_worker, 2, dist_url="auto", backend="gloo", args=(cfg, name, meta.image_root, meta.sem_seg_root))

    gathered = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())[name]["sem_seg"]
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "out" / "model_final.pth"))
    single_cfg = tiny_config(tmp_path / "single", train=[name], test=[name])
    single = Trainer.test(single_cfg, model)[name]["sem_seg"]
    assert abs(gathered["mIoU"] - single["mIoU"]) < 1e-6
    assert abs(gathered["pACC"] - single["pACC"]) < 1e-6
    assert torch.isfinite(torch.tensor(single["mIoU"]))

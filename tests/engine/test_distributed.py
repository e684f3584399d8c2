"""Several CPU processes over gloo (segcls.engine.launch): DDP training and gathered evaluation
give the same results as one process."""
import json
import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog

from segcls.engine import Trainer, launch
from helpers import (
    REPO,
    custom_dataset_entry,
    register_dirs,
    register_tiny_dataset,
    tiny_config,
    tiny_opts,
    write_tiny_dataset,
)


SYNC_BN_INPUT = torch.randn(2, 2, 1, 1, generator=torch.Generator().manual_seed(0))


def _sync_bn_outputs(out):
    """Each process normalises its one 1x1 sample of SYNC_BN_INPUT (ASPP's image pooling with one
    image per process) with a converted SyncBN; rank 0 saves (output, running_mean) to ``out``."""
    from detectron2.utils import comm

    from segcls.modeling.layers import cpu_sync_batch_norm

    model = torch.nn.Sequential(torch.nn.SyncBatchNorm(2))
    assert cpu_sync_batch_norm(model) == 1
    y = model(SYNC_BN_INPUT[comm.get_rank() : comm.get_rank() + 1])
    if comm.is_main_process():
        torch.save((y.detach(), model[0].running_mean), out)


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
    _sync_bn_outputs(str(cfg.OUTPUT_DIR) + "/sync_bn.pt")


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

    # SyncBN on CPU: normalised with the float64 statistics of both processes' samples, as GPU SyncBN.
    y, running_mean = torch.load(tmp_path / "out" / "sync_bn.pt")
    x64 = SYNC_BN_INPUT.double()
    mean, var = x64.mean(dim=(0, 2, 3)), x64.var(dim=(0, 2, 3), unbiased=False)
    expected = (x64[:1] - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(running_mean.double(), 0.1 * mean, rtol=1e-5, atol=1e-6)


def test_readme_two_cpu_processes_command_with_a_shipped_syncbn_aspp_config(tmp_path):
    """The README's `--num-gpus 2 --dist-backend gloo MODEL.DEVICE cpu` with a shipped SyncBN
    DeepLabV3 config (tiny sizes, one image per process: ASPP's image pooling then has one value
    per process), the dataset declared through DATASETS.CUSTOM so that both processes have it."""
    image_dir, label_dir = write_tiny_dataset(str(tmp_path / "data"), num_images=4)
    name = "segcls_test_custom_ddp"
    opts = tiny_opts(tmp_path / "out", train=[name], test=[name], opts=[
        "DATASETS.CUSTOM", custom_dataset_entry(name, image_dir, label_dir),
        "INPUT.BASE_SIZE", "[]", "SOLVER.MAX_ITER", "2", "MODEL.WEIGHTS", "",
    ])
    config = os.path.join(REPO, "configs", "ade20k", "deeplabv3_r50-d8_512x512_80k.yaml")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", "2", "--dist-backend", "gloo",
           "--config-file", config, *opts]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SyncBN layers run as NaiveSyncBatchNorm" in proc.stderr + proc.stdout
    metrics = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())[name]["sem_seg"]
    assert 0.0 <= metrics["mIoU"] <= 100.0 and (tmp_path / "out" / "model_final.pth").exists()

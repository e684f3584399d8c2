#!/usr/bin/env python
"""
Train and evaluate one or more configs with several seeds and summarise mean and spread.

    python tools/run_seeds.py --seeds 0 1 2 --output output/car_vs_baseline \\
        configs/synthetic_context/fcn_r18_demo.yaml configs/synthetic_context/fcn_r18_car.yaml

Each run is ``tools/train_net.py --resume --config-file CFG SEED s OUTPUT_DIR <output>/<key>/seed<s>``
(``--opts KEY VALUE ...``, last on the command line, is passed to every run; ``SEED`` is not
allowed there). ``<key>`` is the config's file name plus a hash of its absolute path and the
options, so two configs of the same name, or one config with other options, never share
results. A run counts as finished only when it has ``model_final.pth`` and its metrics file;
otherwise it is (re)started, with ``--resume`` so that an interrupted run continues from its last
checkpoint. The summary (mean, sample standard deviation, min, max of mIoU, mACC and pACC per
test dataset) is printed as a table and written to ``<output>/summary.json`` (results by
``<key>``, ``"configs"`` maps each key to its config file).
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys

from tabulate import tabulate

from segcls.engine.trainer import METRICS_FILE
from segcls.utils.io import atomic_write

METRICS = ("mIoU", "mACC", "pACC")


def run_key(config, opts):
    """``<config stem>-<8 hex digits>``: a folder name unique to (absolute config path, opts)."""
    digest = hashlib.sha1(json.dumps([os.path.abspath(config), list(opts)]).encode()).hexdigest()[:8]
    return f"{os.path.splitext(os.path.basename(config))[0]}-{digest}"


def is_finished(output_dir):
    """A run is finished when training wrote model_final.pth and evaluation its metrics."""
    return all(os.path.isfile(os.path.join(output_dir, f)) for f in ("model_final.pth", METRICS_FILE))


def run(config, seed, output_dir, opts):
    if not is_finished(output_dir):
        train_net = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")
        cmd = [sys.executable, train_net, "--resume", "--config-file", config, "SEED", str(seed),
               "OUTPUT_DIR", output_dir, *opts]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(output_dir, METRICS_FILE)) as f:
        return json.load(f)


def summarise(values):
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="config files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", required=True, help="folder for the runs and summary.json")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE pairs passed to every run (last)")
    args = parser.parse_args(argv)
    opts = args.opts
    if "SEED" in opts[::2]:
        parser.error("--opts must not set SEED: it would override every seed of --seeds")

    summary, rows = {}, []
    for config in args.configs:
        key = run_key(config, opts)
        results = [run(config, s, os.path.join(args.output, key, f"seed{s}"), opts) for s in args.seeds]
        summary[key] = {}
        for dataset in results[0]:
            summary[key][dataset] = {}
            for metric in METRICS:
                stats = summarise([r[dataset]["sem_seg"][metric] for r in results])
                summary[key][dataset][metric] = stats
                rows.append((key, dataset, metric, stats["mean"], stats["std"], stats["min"], stats["max"]))
    print(tabulate(rows, headers=["run", "dataset", "metric", "mean", "std", "min", "max"], floatfmt=".2f"))
    with atomic_write(os.path.join(args.output, "summary.json"), "w") as f:
        configs = {run_key(c, opts): c for c in args.configs}
        json.dump({"seeds": args.seeds, "opts": opts, "configs": configs, "results": summary}, f, indent=2)


if __name__ == "__main__":
    main()

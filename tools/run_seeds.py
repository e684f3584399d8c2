#!/usr/bin/env python
"""
Train and evaluate one or more configs with several seeds and summarise mean and spread.

    python tools/run_seeds.py --seeds 0 1 2 --output output/car_vs_baseline \\
        configs/synthetic_context/fcn_r18_demo.yaml configs/synthetic_context/fcn_r18_car.yaml

Each run is ``tools/train_net.py --config-file CFG SEED s OUTPUT_DIR <output>/<cfg>/seed<s>``
(``--opts KEY VALUE ...``, last on the command line, is passed to every run). A run whose ``eval/results.json``
already exists is not repeated. The summary (mean, sample standard deviation, min, max of mIoU,
mACC and pACC per test dataset) is printed as a table and written to ``<output>/summary.json``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from tabulate import tabulate

METRICS = ("mIoU", "mACC", "pACC")


def run(config, seed, output_dir, opts):
    metrics_file = os.path.join(output_dir, "eval", "results.json")
    if not os.path.isfile(metrics_file):
        train_net = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")
        cmd = [sys.executable, train_net, "--config-file", config, "SEED", str(seed), "OUTPUT_DIR", output_dir,
               *opts]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(metrics_file) as f:
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

    summary, rows = {}, []
    for config in args.configs:
        name = os.path.splitext(os.path.basename(config))[0]
        results = [run(config, s, os.path.join(args.output, name, f"seed{s}"), opts) for s in args.seeds]
        summary[name] = {}
        for dataset in results[0]:
            summary[name][dataset] = {}
            for metric in METRICS:
                stats = summarise([r[dataset]["sem_seg"][metric] for r in results])
                summary[name][dataset][metric] = stats
                rows.append((name, dataset, metric, stats["mean"], stats["std"], stats["min"], stats["max"]))
    print(tabulate(rows, headers=["config", "dataset", "metric", "mean", "std", "min", "max"], floatfmt=".2f"))
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump({"seeds": args.seeds, "opts": opts, "results": summary}, f, indent=2)


if __name__ == "__main__":
    main()

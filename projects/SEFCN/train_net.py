#!/usr/bin/env python
"""segcls's train_net with this fork's modules and config keys:

    python projects/SEFCN/train_net.py --config-file projects/SEFCN/configs/se_fcn_r18_synthetic.yaml
"""
import segcls  # noqa: F401
from segcls.engine import train_net_cli, train_net_main

from se_fcn import add_se_fcn_config


def main(args):
    return train_net_main(args, add_config_fns=[add_se_fcn_config])


if __name__ == "__main__":
    train_net_cli(main)

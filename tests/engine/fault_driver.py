"""
``tools/train_net.py`` killed in the middle of a checkpoint save, for the fault-injection test
(run as a subprocess: ``python fault_driver.py K [train_net.py arguments]``): the K-th
``torch.save`` writes half of its bytes, then the process is SIGKILLed.
"""
import io
import os
import signal
import sys

import torch

import segcls  # noqa: F401
from segcls.engine import train_net_cli

torch.set_num_threads(1)
kill_at = int(sys.argv.pop(1))
real_save, saves = torch.save, []


def dying_save(obj, f, *args, **kwargs):
    saves.append(f)
    if len(saves) < kill_at:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


torch.save = dying_save

if __name__ == "__main__":
    train_net_cli()

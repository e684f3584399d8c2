"""
``tools/train_net.py`` with an injected fault, for the fault-injection tests (run as a
subprocess: ``python fault_driver.py FAULT [train_net.py arguments]``):

- ``sigint@N``: the process sends itself SIGINT after iteration N (1-based) has completed;
- ``kill_in_save@K``: the K-th checkpoint save writes half of its bytes, then the process is
  SIGKILLed (a crash in the middle of a save).
"""
import io
import os
import signal
import sys

import torch
from detectron2.engine import HookBase

import segcls  # noqa: F401
from segcls.engine import Trainer, train_net_cli

torch.set_num_threads(1)
fault, value = sys.argv.pop(1).split("@")
value = int(value)

if fault == "sigint":

    class SendSigint(HookBase):
        def after_step(self):
            if self.trainer.iter + 1 == value:
                os.kill(os.getpid(), signal.SIGINT)

    build_hooks = Trainer.build_hooks
    Trainer.build_hooks = lambda self: build_hooks(self) + [SendSigint()]
elif fault == "kill_in_save":
    real_save, saves = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) < value:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save
else:
    raise SystemExit(f"unknown fault {fault!r}")

if __name__ == "__main__":
    train_net_cli()

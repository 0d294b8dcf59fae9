"""`interp` with the process dying right after the checkpoint of step 2 is written: the test of
resuming a multi-process fine-tune after a kill (launched by test_distributed.py)."""

import os
import sys

import interp.finetune as finetune
from interp.cli import main

_train = finetune.train


def dying_train(*args, **kwargs):
    def on_step(step, loss):
        if step == 2:
            os._exit(17)       # no cleanup, like a kill
    return _train(*args, **{**kwargs, "on_step": on_step})


finetune.train = dying_train
sys.exit(main())

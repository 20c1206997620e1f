"""Run one adapter for a few iterations in its own process (used by the kill/resume test).

``python -m tests.adapters.run_adapter ADAPTER TEACHER CHECKPOINT OUT [--kill-at N]``
trains with checkpoints every 2 iterations; ``--kill-at N`` sends SIGKILL to
the process itself right after iteration N, as a crash would. The final
student state dict is saved to OUT.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from dfkd_guard import Guard, GuardConfig, hookimpl
from dfkd_guard.adapters.training import train
from dfkd_guard.bench.models import ConvNet
from tests.adapters.adapter_factory import ITERATIONS, make_adapter


class KillAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def dfkd_guard_step_finished(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("teacher")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = ConvNet((8, 16, 32))
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    plugins = [KillAt(args.kill_at)] if args.kill_at >= 0 else []
    # a short BN-prior warm-up judging any teacher NTL-like (ntl_separation 0), with a verdict in iteration 2
    # (scored batches 1-3 of 2 per iteration): the checkpoint after it holds the corrected targets and the trap
    # memory's images and read position, which must survive a resume
    config = GuardConfig(
        scorer={"name": "atesc", "params": {"steps": 1}},
        forget={"memory": 16, "recall": 4},
        bn_prior={"skip_batches": 1, "warmup_batches": 2, "ntl_separation": 0.0},
    )
    guard = Guard(config, teacher.eval(), plugins=plugins, load_entrypoints=False)
    synthesizer, optimizer, scheduler = make_adapter(args.adapter, teacher, guard)
    train(
        synthesizer,
        optimizer,
        ITERATIONS,
        kd_steps=2,
        scheduler=scheduler,
        checkpoint_path=args.checkpoint,
        checkpoint_every=2,
        progress=False,
    )
    torch.save(synthesizer.student.state_dict(), args.out)


if __name__ == "__main__":
    main()

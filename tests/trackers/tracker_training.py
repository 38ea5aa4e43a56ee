"""A tiny real training that logs to real trackers, offline: `python tests/trackers/tracker_training.py OUT
[--report-to tensorboard wandb trackio] [--log-every N] [--max-steps 12]`.

Run in a process of its own: trackio fixes its folder (`TRACKIO_DIR`) when it is first imported, and W&B's service
is best left to a process that ends.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--report-to", nargs="+", default=["tensorboard", "wandb", "trackio"])
    parser.add_argument("--log-every", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--eval-steps", type=int, default=4)
    options = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", options.output_dir)
    os.environ.setdefault("TRACKIO_DIR", os.path.join(options.output_dir, "trackio"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from tests.plain_trainer import build_plain_trainer

    callbacks, report_to = [], options.report_to
    if options.log_every:
        from hf_trainkit.callbacks import EveryNStepsCallback

        callbacks = [EveryNStepsCallback(report_to, every_n_steps=options.log_every)]
        report_to = []
    trainer = build_plain_trainer(options.output_dir, max_steps=options.max_steps, save_steps=options.max_steps,
                                  eval_steps=options.eval_steps, report_to=report_to, callbacks=callbacks,
                                  project="trackers-test", run_name="tiny")
    trainer.train()
    trainer.save_state()
    return 0


if __name__ == "__main__":
    sys.exit(main())

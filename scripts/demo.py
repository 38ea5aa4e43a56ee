#!/usr/bin/env python
"""Train GRPO, PSR, NSR and W-REINFORCE briefly on the built-in toy task (CPU) and compare their rewards."""

from hf_trainkit.commands.demo import main


if __name__ == "__main__":
    raise SystemExit(main())

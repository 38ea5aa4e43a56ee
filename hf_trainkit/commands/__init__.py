"""Command-line commands that train: flag parsing, defaults shown in `--help`, and exit codes. The other commands
live beside what they drive (`checkpointing/command.py`, `monitor/command.py`, `eval/command.py`); `hf_trainkit.cli`
dispatches to all of them."""

"""scripts/train_grpo.py, plus what each rank saw: OUTPUT_DIR/rank_views/rank_<i>.json at the end of training.

Only rank 0 writes trainer_state.json; this harness lets a test check that every process was part of one group
(world size 2 on both) and logged the same global-batch metrics. It is the script's own `main`, given one more
callback.
"""

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hf_trainkit.commands.train_grpo import main  # noqa: E402


class DumpRankView(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / "rank_views"
        folder.mkdir(parents=True, exist_ok=True)
        view = {"process_index": args.process_index, "world_size": args.world_size,
                "env_rank": os.environ.get("RANK"), "log_history": state.log_history}
        (folder / f"rank_{args.process_index}.json").write_text(json.dumps(view))


if __name__ == "__main__":
    sys.exit(main(callbacks=[DumpRankView()]))

"""A plain transformers `Trainer` (causal LM on the toy sentences) with hf_trainkit's checkpoint callbacks.

Used in-process by the tests and as a script, so that a real subprocess can be killed:

    python tests/plain_trainer.py OUTPUT_DIR --max-steps 20 --save-steps 1 [--eval-steps 2] [--save-top-k 1 ...]
"""

from __future__ import annotations

import argparse
import os
import sys


def build_plain_trainer(output_dir, *, max_steps=12, save_steps=2, eval_steps=None, seed=0, callbacks=None,
                        **training_args):
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_trainkit.tasks.digit import build_tiny_model, build_toy_dataset, build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    # "rule = answer" sentences: a language the model can learn, so losses move.
    prompts = build_toy_dataset(512, seed=seed)["prompt"]
    encoded = tokenizer([f"{p} {len(p) % 10}" for p in prompts], padding="max_length", max_length=8,
                        truncation=True)
    rows = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "labels": [[t if m else -100 for t, m in zip(ids, mask)]
                       for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]}
    data = Dataset.from_dict(rows)
    split = data.train_test_split(test_size=64, seed=seed)
    settings = dict(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8,
                    learning_rate=3e-3, logging_steps=1, save_strategy="steps", save_steps=save_steps,
                    report_to=[], seed=seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                    restore_callback_states_from_checkpoint=True)
    if eval_steps:
        settings.update(eval_strategy="steps", eval_steps=eval_steps, per_device_eval_batch_size=64)
    settings.update(training_args)
    return Trainer(model=build_tiny_model(tokenizer, seed=seed), args=TrainingArguments(**settings),
                   train_dataset=split["train"], eval_dataset=split["test"] if eval_steps else None,
                   callbacks=callbacks)


def main(argv=None) -> int:
    from hf_trainkit.callbacks import CheckpointPolicyCallback
    from hf_trainkit.checkpointing import find_resume_checkpoint

    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=2)
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--monitor", default=None)
    parser.add_argument("--save-top-k", type=int, default=None)
    options = parser.parse_args(argv)
    callback = CheckpointPolicyCallback(monitor=options.monitor, save_top_k=options.save_top_k)
    trainer = build_plain_trainer(options.output_dir, max_steps=options.max_steps, save_steps=options.save_steps,
                                  eval_steps=options.eval_steps, callbacks=[callback])
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(options.output_dir))
    trainer.save_state()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())

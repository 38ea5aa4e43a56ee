"""Dynamic sampling (DAPO's, generalised to every mode): the pieces the trainer's refill loop is made of.

A generation batch holds groups of `num_generations` completions per prompt. A group that teaches the mode nothing
([`informative_groups`]: grpo: equal rewards; psr: no positive; nsr: no negative) is replaced by an informative
group generated for a fresh prompt, drawn from the training set by [`RefillSampler`], for up to
`dynamic_sampling_max_rounds` extra generation rounds. Each round generates a whole generation batch (every rank
its usual share, so that every rank runs the same generation and collectives), and [`assign_refills`] moves its
informative groups into the slots of the uninformative ones.

Pure functions and one small stateful sampler (its state goes into the checkpoint), no trainer.
"""

from __future__ import annotations

from typing import Any

import torch


# The refill sampler's state, in every checkpoint of a run with dynamic sampling.
REFILL_STATE_NAME = "dynamic_sampling.json"
# Per-row tensors of TRL's batch and how each is padded: on the left (the prompt) or on the right (the completion).
_LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT_PADDED = {"completion_ids": "pad", "completion_mask": 0, "old_per_token_logps": 0.0,
                 "ref_per_token_logps": 0.0, "sampling_per_token_logps": 0.0, "importance_sampling_ratio": 1.0,
                 "tool_mask": 1}
_PER_ROW = ("advantages", "keep", "counted")


class RefillSampler:
    """The prompts of the refill rounds: the training set's indices in a random order of their own (a new one per
    pass over the set), apart from the main sampler's, so that an epoch of the main sampler still means every
    prompt once, in its order. Reproducible: the order depends on `seed` and the pass only, and the state is the
    number of prompts drawn so far.

    Args:
        size (`int`): number of prompts in the training set.
        seed (`int`): the run's seed.

    Example:

    ```python
    >>> sampler = RefillSampler(10, seed=0)
    >>> first = sampler.draw(4)
    >>> state = sampler.state_dict()
    >>> again = RefillSampler(10, seed=0); again.load_state_dict(state)
    >>> again.draw(3) == RefillSampler(10, seed=0).draw(7)[4:]
    True
    ```
    """

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError(f"RefillSampler: the training set is empty (size={size}); dynamic sampling needs prompts.")
        self.size, self.seed, self.drawn = int(size), int(seed), 0
        self._order: tuple[int, list[int]] | None = None

    def _pass_order(self, index: int) -> list[int]:
        if self._order is None or self._order[0] != index:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (index + 1))
            self._order = (index, torch.randperm(self.size, generator=generator).tolist())
        return self._order[1]

    def draw(self, count: int) -> list[int]:
        """The next `count` prompt indices."""
        indices = []
        while len(indices) < count:
            index, position = divmod(self.drawn, self.size)
            take = min(count - len(indices), self.size - position)
            indices.extend(self._pass_order(index)[position:position + take])
            self.drawn += take
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]):
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ValueError(
                f"RefillSampler: the checkpoint's refill state is for {state['size']} prompts and seed "
                f"{state['seed']}, this run has {self.size} prompts and seed {self.seed}; resume with the same data set and --seed."
            )
        self.drawn = int(state["drawn"])


def group_keys(num_groups: int, num_generations: int, local_size: int) -> list:
    """Which groups may take each other's place without moving rows between processes: groups that lie wholly on
    one process share its index; where groups straddle processes (`local_size` not a multiple of
    `num_generations`) each group can only be replaced by the group in the same slot of the refill batch."""
    if local_size % num_generations == 0:
        return [group * num_generations // local_size for group in range(num_groups)]
    return [("slot", group) for group in range(num_groups)]


def assign_refills(needed: torch.Tensor, available: torch.Tensor, keys: list) -> dict[int, int]:
    """Slot -> refill group: each slot where `needed` is true gets the first unused group of the refill batch where
    `available` is true and whose key is the slot's, in slot order. Deterministic: every process computes it from
    the same all-process values and gets the same answer.

    Example:

    ```python
    >>> assign_refills(torch.tensor([True, False, True]), torch.tensor([False, True, True]), [0, 0, 0])
    {0: 1, 2: 2}
    ```
    """
    free: dict[Any, list[int]] = {}
    for group, ok in enumerate(available.tolist()):
        if ok:
            free.setdefault(keys[group], []).append(group)
    assignment = {}
    for slot, need in enumerate(needed.tolist()):
        if need and free.get(keys[slot]):
            assignment[slot] = free[keys[slot]].pop(0)
    return assignment


def _pad_to(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    if tensor.dim() < 2 or tensor.shape[1] >= width:
        return tensor
    padding = tensor.new_full((tensor.shape[0], width - tensor.shape[1], *tensor.shape[2:]), value)
    return torch.cat([padding, tensor] if left else [tensor, padding], dim=1)


def concat_rows(first: dict[str, Any], second: dict[str, Any], pad_token_id: int) -> dict[str, Any]:
    """The rows of two text batches of TRL's layout in one batch (`first`'s rows, then `second`'s), re-padded to the
    wider prompt (left) and completion (right). Scalars (`num_items_in_batch`) are taken from `first`: the caller
    recounts them."""
    joined = dict(first)
    for table, left in ((_LEFT_PADDED, True), (_RIGHT_PADDED, False)):
        for key, value in table.items():
            a, b = first.get(key), second.get(key)
            if a is None and b is None:
                continue
            if a is None or b is None:
                raise ValueError(f"concat_rows: {key!r} is in one batch only; the two rounds were not generated alike.")
            value = pad_token_id if value == "pad" else value
            if a.dim() >= 2 and a.shape[1] != b.shape[1]:
                width = max(a.shape[1], b.shape[1])
                a, b = _pad_to(a, width, value, left), _pad_to(b, width, value, left)
            joined[key] = torch.cat([a, b], dim=0)
    for key in _PER_ROW:
        if first.get(key) is not None:
            joined[key] = torch.cat([first[key], second[key]], dim=0)
    return joined


def take_rows(batch: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
    """The rows `index` of a text batch (per-row tensors only; scalars pass through)."""
    size = batch["completion_ids"].shape[0]
    return {key: value.index_select(0, index.to(value.device))
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size else value
            for key, value in batch.items()}

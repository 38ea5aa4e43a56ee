"""FilteredGRPOTrainer on a real tiny vision-language model (Qwen2.5-VL's architecture, built locally): dropped
samples leave image batches too, and the loss is TRL's loss on a batch made of the kept samples alone."""

import numpy as np
import pytest
import torch
from trl import GRPOTrainer

from hf_trainkit.rl.rows import mask_rows, select_rows

from .test_filtered_grpo_trainer import LOSS_TYPES, alternating_reward, gradients


NUM_GENERATIONS = 4


def images(seed, count, sizes):
    rng = np.random.default_rng(seed)
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for (h, w) in sizes[:count]]


@pytest.fixture(scope="module")
def vlm_parts():
    """A tiny Qwen2.5-VL and a processor that keeps image sizes between 56 and 112 px, so images differ in patch
    count; and prompts with one or two images, so samples differ in image count."""
    from datasets import Dataset
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hf_trainkit.tasks.vision import TINY_VLM_CHAT_TEMPLATE, build_tiny_vlm_tokenizer, image_only_processor

    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    processor = image_only_processor(image_processor, build_tiny_vlm_tokenizer(), TINY_VLM_CHAT_TEMPLATE)
    rows = {"prompt": [], "images": []}
    sizes = [(56, 56), (56, 84), (84, 112), (112, 56)]
    for i in range(4):
        count = 1 + i % 2
        rows["images"].append(images(i, count, sizes[i:] + sizes[:i]))
        rows["prompt"].append([{"role": "user", "content": [*([{"type": "image"}] * count),
                                                            {"type": "text", "text": "which bar is highest ?"}]}])
    return processor, Dataset.from_dict(rows)


@pytest.fixture()
def make_vlm_trainer(tmp_path, vlm_parts):
    from hf_trainkit.rl import FilteredGRPOConfig, FilteredGRPOTrainer
    from hf_trainkit.tasks.vision import build_tiny_vlm

    processor, dataset = vlm_parts

    def factory(mode, reward_funcs=alternating_reward, **config):
        args = FilteredGRPOConfig(
            output_dir=str(tmp_path / mode), mode=mode, per_device_train_batch_size=2 * NUM_GENERATIONS,
            num_generations=NUM_GENERATIONS, max_completion_length=4, report_to=[], save_strategy="no", bf16=False,
            log_mode_summary=False, **config)
        return FilteredGRPOTrainer(model=build_tiny_vlm(processor, seed=0), reward_funcs=reward_funcs,
                                   args=args, train_dataset=dataset, processing_class=processor)

    return factory


def generation_inputs(trainer, first_prompt=0):
    trainer.current_gradient_accumulation_steps = 1
    rows = [trainer.train_dataset[i] for i in (first_prompt, first_prompt + 1)]  # one image, then two
    return [row for row in rows for _ in range(trainer.num_generations)]


def kept_samples_batch(batch, keep):
    """The image batch TRL would build from the kept samples alone, written plainly from Qwen2-VL's layout:
    image i has prod(image_grid_thw[i]) rows of pixel_values, and sample s owns num_images[s] consecutive images."""
    patches = [int(t * h * w) for t, h, w in batch["image_grid_thw"].tolist()]
    image_owner = [s for s, count in enumerate(batch["num_images"]) for _ in range(count)]
    pixel_rows, grid_rows, start = [], [], 0
    for image, owner in enumerate(image_owner):
        if keep[owner]:
            pixel_rows.extend(range(start, start + patches[image]))
            grid_rows.append(image)
        start += patches[image]
    subset = {}
    for key, value in batch.items():
        if key == "keep":
            continue
        if key == "pixel_values":
            subset[key] = value[pixel_rows]
        elif key == "image_grid_thw":
            subset[key] = value[grid_rows]
        elif key == "num_images":
            subset[key] = [n for n, k in zip(value, keep.tolist()) if k]
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            subset[key] = value[keep]
        else:
            subset[key] = value
    subset["num_items_in_batch"] = batch["completion_mask"][keep].sum()
    return subset


class VisionRecorder:
    """Records how many pixel_values rows reach the vision tower, and the batch size of the language model."""

    def __init__(self, model):
        self.pixel_rows, self.batch_sizes = [], []
        self.handles = [
            model.model.visual.register_forward_pre_hook(self.on_visual, with_kwargs=True),
            model.register_forward_pre_hook(self.on_model, with_kwargs=True),
        ]

    def on_visual(self, module, args, kwargs):
        self.pixel_rows.append((args[0] if args else kwargs["hidden_states"]).shape[0])

    def on_model(self, module, args, kwargs):
        self.batch_sizes.append(kwargs["input_ids"].shape[0])

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("mode,padding", [("nsr", 0), ("psr", 2)])
def test_vlm_loss_equals_trl_loss_on_kept_samples(make_vlm_trainer, loss_type, mode, padding):
    trainer = make_vlm_trainer(mode, loss_type=loss_type)
    if padding:  # as on a rank with fewer kept samples than another
        trainer._rows_per_rank = lambda kept, device: kept + padding
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    assert batch["num_images"] == [1] * NUM_GENERATIONS + [2] * NUM_GENERATIONS
    keep = batch["keep"]
    assert keep.tolist() == [(i % 2 == 0) == (mode == "psr") for i in range(2 * NUM_GENERATIONS)]
    reference_batch = kept_samples_batch(batch, keep)

    recorder = VisionRecorder(model)
    model.zero_grad()
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    ours = gradients(model)
    recorder.remove()
    # Padding rows are copies of the first kept sample, images included.
    first_kept_rows = kept_samples_batch(batch, torch.arange(len(keep)) == int(keep.nonzero()[0]))
    expected_rows = reference_batch["pixel_values"].shape[0] + padding * first_kept_rows["pixel_values"].shape[0]
    assert recorder.batch_sizes == [int(keep.sum()) + padding], "dropped samples reached the forward pass"
    assert recorder.pixel_rows == [expected_rows], "dropped samples' images reached the vision tower"

    model.zero_grad()
    reference = GRPOTrainer._compute_loss(trainer, model, reference_batch)
    reference.backward()
    theirs = gradients(model)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    assert len(ours) == len(theirs) > 0
    assert any(name.startswith("model.visual") for name, p in model.named_parameters() if p.grad is not None)
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-7)


def first_group_flat(completions, **kwargs):
    """The one-image prompt's group all right (zero variance), the two-image prompt's group alternating."""
    return [1.0] * NUM_GENERATIONS + [float(i % 2 == 0) for i in range(NUM_GENERATIONS)]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_vlm_grpo_skips_a_zero_variance_group_with_its_images_and_keeps_trls_loss(make_vlm_trainer, loss_type):
    trainer = make_vlm_trainer("grpo", loss_type=loss_type, reward_funcs=first_group_flat)
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    keep = batch["keep"]
    assert keep.tolist() == [False] * NUM_GENERATIONS + [True] * NUM_GENERATIONS
    assert bool(batch["counted"].all())
    recorder = VisionRecorder(model)
    model.zero_grad()
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    ours = gradients(model)
    recorder.remove()
    assert recorder.batch_sizes == [NUM_GENERATIONS], "the flat group reached the forward pass"
    assert recorder.pixel_rows == [kept_samples_batch(batch, keep)["pixel_values"].shape[0]], "its images did too"

    model.zero_grad()  # TRL's loss on the whole batch, flat group included
    reference = GRPOTrainer._compute_loss(trainer, model, {k: v for k, v in batch.items() if k not in ("keep", "counted")})
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    for mine, ref in zip(ours, gradients(model)):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-7)


def test_selected_image_batch_matches_the_plain_layout(make_vlm_trainer):
    trainer = make_vlm_trainer("nsr")
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    keep = torch.tensor([False, True, False, False, True, True, False, False])  # one sample of 1 image, two of 2
    selected = select_rows(batch, keep)
    expected = kept_samples_batch(batch, keep)
    assert selected["num_images"] == [1, 2, 2]
    for key in ("pixel_values", "image_grid_thw", "prompt_ids", "completion_ids", "mm_token_type_ids"):
        if key in expected:
            assert torch.equal(selected[key], expected[key]), key


def test_a_layout_that_does_not_add_up_is_not_split(make_vlm_trainer):
    trainer = make_vlm_trainer("nsr")
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    assert select_rows(batch, batch["keep"]) is not None
    batch["pixel_values"] = batch["pixel_values"][1:]  # patch rows no longer match image_grid_thw
    assert select_rows(batch, batch["keep"]) is None


def test_unsplittable_layout_falls_back_to_masking_with_the_row_mean_fixed(make_vlm_trainer, caplog, monkeypatch):
    """A layout the row selection cannot split (simulated: the splitter says so) is masked with a warning, and the
    loss is still the kept samples' loss (row-mean loss types rescaled)."""
    import hf_trainkit.rl.rows as rows

    trainer = make_vlm_trainer("nsr", loss_type="grpo")
    model = trainer.model
    model.train()
    batch = trainer._generate_and_score_completions(generation_inputs(trainer))
    keep = batch["keep"]
    reference = GRPOTrainer._compute_loss(trainer, model, kept_samples_batch(batch, keep))
    monkeypatch.setattr(rows, "split_per_sample", lambda inputs: None)
    recorder = VisionRecorder(model)
    with caplog.at_level("WARNING"):
        loss = trainer._compute_loss(model, batch)
    recorder.remove()
    assert "masked" in caplog.text
    assert recorder.batch_sizes == [len(keep)]  # the fallback: every row runs
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    assert mask_rows(batch, keep)["advantages"][~keep].abs().sum() == 0

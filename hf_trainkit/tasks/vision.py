"""Vision-language models without torchvision: a processor made of an image processor and a tokenizer, a tiny
Qwen2.5-VL built from a config, and the loaders the training script uses.

Why a processor of our own: the Qwen2-VL / Qwen2.5-VL processors carry a video processor, and transformers' video
processors need torchvision, which a CPU-only torch cannot import. `AutoProcessor.from_pretrained` then fails
although images alone need nothing of it. [`ImageOnlyQwen2_5_VLProcessor`] is the same processor without the video
part; [`load_processor`] uses the full processor where it loads (a GPU machine with torchvision) and this one where
it does not.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Special tokens of the tiny VLM, spelled as in Qwen2.5-VL, so TRL finds `<|image_pad|>` and the processor
# expands it into one token per merged image patch.
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<|im_end|>", "<unk>"
VLM_SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, "<|im_start|>", "<|vision_start|>", "<|vision_end|>",
                      "<|image_pad|>", "<|video_pad|>")
CHAT_WORDS = ("user", "assistant")
# A Qwen-style chat template reduced to what the chart task needs; whitespace separates every word, since the
# tokenizer is word-level.
TINY_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }} {% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }} {% endif %}{% endfor %}{% endif %}"
    "<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
# Image side: Qwen2.5-VL's 14 px patches merged 2 x 2, so a 56 px chart is 16 patches and 4 image tokens.
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2
TINY_VLM_IMAGE_SIZE = 56


@functools.cache  # one class, so that every processor built here is an instance of the same type
def _image_only_processor_class():
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        """`Qwen2_5_VLProcessor` without its video processor (which needs torchvision): images and text only."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2_5_VLProcessor


def image_only_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A Qwen2.5-VL processor from an image processor and a tokenizer, with no video part."""
    return _image_only_processor_class()(image_processor, tokenizer, chat_template=chat_template)


def build_tiny_vlm_tokenizer(words=None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the VLM special tokens, the chat words and `words` (default: the chart task's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if words is None:
        from .chart import CHART_WORDS

        words = CHART_WORDS
    vocabulary = list(dict.fromkeys([*VLM_SPECIAL_TOKENS, *CHAT_WORDS, *words]))
    backend = Tokenizer(models.WordLevel(vocab={token: i for i, token in enumerate(vocabulary)}, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_vlm_processor(image_size: int = TINY_VLM_IMAGE_SIZE):
    """The tiny VLM's processor: Qwen2-VL's PIL image processor (no torchvision) sized so that every chart of
    `image_size` pixels keeps its size, and [`build_tiny_vlm_tokenizer`]."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=PATCH_SIZE,
                                               merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    return image_only_processor(image_processor, build_tiny_vlm_tokenizer(), chat_template=TINY_VLM_CHAT_TEMPLATE)


def build_tiny_vlm(processor=None, *, hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 32,
                   vision_depth: int = 2, seed: int | None = 0):
    """A randomly initialised Qwen2.5-VL (its architecture, vision tower included) with a few small layers, built
    from a config: nothing is downloaded. Seeded with its own generator state, so the caller's RNG is untouched."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = processor or build_tiny_vlm_processor()
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VLM_SPECIAL_TOKENS}
    head_dim = hidden_size // 4
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
            # mrope splits each head's rotary half-dimension into (time, height, width) sections.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_sections(head_dim)},
            pad_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN], bos_token_id=None, tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_heads=2,
            out_hidden_size=hidden_size, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE, fullatt_block_indexes=[vision_depth - 1], window_size=56,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]), _without_zero3_init():
        if seed is not None:
            torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids[PAD_TOKEN]
    model.generation_config.eos_token_id = ids[EOS_TOKEN]
    model.generation_config.bos_token_id = None
    return model


@contextlib.contextmanager
def _without_zero3_init():
    """Build a whole model on this one process even inside a ZeRO-3 launch: a composite model creates its vision
    tower through `_from_config`, which under ZeRO-3 partitions it with a collective that the other ranks (waiting
    for the main process to save the base model) never join. transformers keeps the switch in a module global."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _mrope_sections(head_dim: int) -> list[int]:
    half = head_dim // 2
    time = half // 4
    height = (half - time) // 2
    return [time, height, half - time - height]


def tiny_vlm_recipe(seed: int) -> dict:
    """What [`build_tiny_vlm`] was called with: enough to build the same weights again."""
    return {"builder": "hf_trainkit.tasks.vision.build_tiny_vlm", "seed": seed, "hidden_size": 64, "num_layers": 2,
            "image_size": TINY_VLM_IMAGE_SIZE}


def ensure_tiny_vlm(directory: str, recipe: dict) -> str:
    """`directory` holding the tiny VLM of `recipe` and its processor, built and saved unless already there."""
    from .saved import ensure_saved, save_model_here

    def save(folder: str) -> None:
        processor = build_tiny_vlm_processor(recipe["image_size"])
        save_model_here(build_tiny_vlm(processor, hidden_size=recipe["hidden_size"], num_layers=recipe["num_layers"],
                                       seed=recipe["seed"]), folder)
        save_processor(processor, folder)

    return ensure_saved(directory, recipe, save)


def save_processor(processor, directory: str) -> None:
    """Save a processor so that both `AutoProcessor` (with torchvision) and [`load_processor`] (without) load it:
    the image-only processor is recorded under the class name of the full one."""
    processor.save_pretrained(directory)
    config_file = os.path.join(directory, "processor_config.json")
    if type(processor).__name__.startswith("ImageOnly") and os.path.isfile(config_file):
        with open(config_file) as handle:
            config = json.load(handle)
        config["processor_class"] = type(processor).__mro__[1].__name__
        with open(config_file, "w") as handle:
            json.dump(config, handle, indent=2)


def is_vision_language_model(name_or_path: str) -> bool:
    """Whether the config of `name_or_path` describes a vision-language model (it has a vision config)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    return getattr(config, "vision_config", None) is not None


def load_processor(name_or_path: str):
    """The model's processor: `AutoProcessor` where it loads; where it fails for lack of torchvision (the video
    processor of Qwen2-VL / Qwen2.5-VL), the same processor built from the image processor and the tokenizer."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ImportError, ValueError, AttributeError) as error:
        first_error = error
    try:
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
    except TypeError:
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
    except Exception:
        raise first_error from None
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return image_only_processor(image_processor, tokenizer, chat_template=tokenizer.chat_template
                                or _saved_chat_template(name_or_path))


def _saved_chat_template(directory: str) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path) as handle:
                text = handle.read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


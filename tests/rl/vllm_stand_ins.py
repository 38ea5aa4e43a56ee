"""STAND-INS for the GPU weight transport of TRL's vLLM paths, for vLLM's CPU build (tests only, never the package).

TRL 1.16 pushes the trained weights into vLLM after each optimizer step through transports a CPU cannot have:

- colocate: `VLLMGeneration.sync_weights` calls the model runner's per-tensor `model.load_weights([(name, param)])`.
  vLLM's CPU backend re-packs each linear layer's weights after loading and leaves an empty parameter behind, so the
  first sync raises `AttributeError: 'Parameter' object has no attribute 'weight_loader'`.
  Stand-in: the same tensors (TRL's own `_iter_named_params`, names included) through vLLM's own
  `model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)`, which reloads and re-packs
  (and a re-pack of a tied output layer, which that reload misses: `repack_tied_lm_head`).
- server: `VLLMClient.init_communicator` / `update_named_params` run on vLLM's NCCL weight-transfer engine, which needs
  a CUDA device (`NotImplementedError` at trainer start). Stand-in: no communicator; the tensors (the same iterator)
  are written to a safetensors folder and the server (`VLLM_SERVER_DEV_MODE=1`) is asked to
  `POST /collective_rpc {"method": "reload_weights", ...}` from it.

Everything else (when TRL syncs, what it syncs, generation, log-probs, importance sampling, the loss) stays TRL's.
`share_one_engine` is a test economy, not a transport: the trainers of one test process use one colocated engine
(an engine start takes 30-50 s here); TRL's first sync of each new trainer (at step 0) loads that trainer's weights.
"""

from __future__ import annotations

import os
import tempfile


def install_colocate_weight_reload() -> None:
    """STAND-IN for TRL's colocate per-tensor `load_weights` (see the module docstring)."""
    from trl.generation import vllm_generation

    original = vllm_generation.VLLMGeneration.sync_weights
    if getattr(original, "_hf_trainkit_stand_in", False):
        return

    def sync_weights(self):
        if self.mode != "colocate":
            return original(self)
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
        repack_tied_lm_head(runner.get_model())
        self.llm.reset_prefix_cache()
        self.stand_in_syncs = getattr(self, "stand_in_syncs", 0) + 1

    sync_weights._hf_trainkit_stand_in = True
    vllm_generation.VLLMGeneration.sync_weights = sync_weights


def repack_tied_lm_head(model) -> None:
    """vLLM's CPU backend packs the output layer's weights into a kernel-side copy when the model loads. With tied
    embeddings (the toy models) that layer's weight *is* the input embedding, which the checkpoint names only once:
    `reload_weights` refreshes the embedding but not the output layer's packed copy, so vLLM went on sampling from the
    base model's output layer (log-prob gap 7.6 after a perturbation, 0.2 once re-packed; measured). Re-pack it."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is not None and embed is not None and lm_head.weight is embed.weight:
        lm_head.quant_method.process_weights_after_loading(lm_head)


def install_server_weight_transport() -> None:
    """STAND-IN for TRL's NCCL weight transfer to a `trl vllm-serve` server (see the module docstring)."""
    import requests
    from safetensors.torch import save_file
    from trl.generation.vllm_client import VLLMClient

    if getattr(VLLMClient.update_named_params, "_hf_trainkit_stand_in", False):
        return

    def init_communicator(self, device=None):
        self.stand_in_folder = tempfile.mkdtemp(prefix="vllm-weights-")

    def update_named_params(self, metadata, named_params):
        folder = self.stand_in_folder
        tensors = {name: param.detach().to("cpu").contiguous().clone() for name, param in named_params}
        save_file(tensors, os.path.join(folder, "model.safetensors"))
        response = requests.post(f"{self.base_url}/collective_rpc", json={
            "method": "reload_weights", "kwargs": {"weights_path": folder, "is_checkpoint_format": True}}, timeout=600)
        response.raise_for_status()
        self.stand_in_syncs = getattr(self, "stand_in_syncs", 0) + 1

    def close_communicator(self):
        pass

    update_named_params._hf_trainkit_stand_in = True
    VLLMClient.init_communicator = init_communicator
    VLLMClient.update_named_params = update_named_params
    VLLMClient.close_communicator = close_communicator


def share_one_engine() -> None:
    """Test economy: every `LLM(...)` TRL builds in this process for the same model returns the first one."""
    from trl.generation import vllm_generation

    if getattr(vllm_generation.LLM, "_hf_trainkit_shared", False):
        return
    real_llm = vllm_generation.LLM
    engines = {}

    def shared_llm(**kwargs):
        key = (kwargs.get("model"), kwargs.get("max_model_len"))
        if key not in engines:
            engines[key] = real_llm(**kwargs)
        return engines[key]

    shared_llm._hf_trainkit_shared = True
    vllm_generation.LLM = shared_llm

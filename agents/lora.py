"""LoRA adapters through peft: the policy's model wrapped for training, and plain copies of it with
the adapter merged, for engines that decode a plain transformers model.

`add_adapter` wraps the model with `peft.get_peft_model`, which freezes every weight but the
adapter's. The wrapped model's forward is the adapted policy, which the learner and the `hf` engine
(`lora_rollout="apply"`) both run. `merged_copy` is a plain model whose adapted weights are W + s·B·A,
rounded to W's dtype, and which shares every other weight with the policy; `refresh_merged` rewrites
them in place after an optimizer step (the `hf` engine's `lora_rollout="merge"`, and the `vllm`
engine, which loads these weights).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

ADAPTER_FILE = "adapter_model.safetensors"  # what peft's save_pretrained writes


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("use_peft=True needs peft: `pip install 'thinkgym[peft]'` (or `pip install peft`)") from exc
    return peft


def is_adapted(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model (checked without importing peft where nothing imported it)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model that a forward of `model` runs: a peft model's base, its LoRA layers
    inside it, which computes the adapted policy and takes transformers' keyword arguments (the KV
    cache's name among them); any other model itself."""
    return model.get_base_model() if is_adapted(model) else model


def add_adapter(model: torch.nn.Module, r: int, alpha: float, dropout: float = 0.0,
                target_modules: list[str] | None = None) -> torch.nn.Module:
    """`model` with a LoRA adapter (GRPOConfig's `lora_*` fields, TRL's names); only the adapter trains.

    The adapter is kept in fp32 whatever the model's dtype (peft's `autocast_adapter_dtype`)."""
    peft = _peft()
    targets = target_modules[0] if target_modules is not None and len(target_modules) == 1 else target_modules
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                             bias="none")  # one name is a regex or `all-linear` to peft, as TRL passes it
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ValueError(f"lora_target_modules={target_modules!r} does not fit this model: {exc}") from exc


def adapted_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The LoRA layers of a peft model, by their module name in the base model."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in base_model(model).named_modules() if isinstance(m, LoraLayer)}


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model computing `model` with its adapter merged. It shares every weight the
    adapter leaves alone with `model` (an adapted matrix is the only memory it adds), and it follows the
    adapter through `refresh_merged`."""
    base = base_model(model)
    layers = adapted_layers(model)
    own = {id(p) for layer in layers.values() for name, p in layer.named_parameters() if name != "base_layer.bias"}
    shared = {id(p): p for p in base.parameters() if id(p) not in own}
    plain = copy.deepcopy(base, memo=shared)  # copies only the adapted weights and the adapters
    for name in layers:
        parent, _, child = name.rpartition(".")
        holder = plain.get_submodule(parent) if parent else plain
        setattr(holder, child, getattr(holder, child).get_base_layer())  # the LoRA layer's own Linear, without the adapter
    plain.eval().requires_grad_(False)
    refresh_merged(plain, model)
    return plain


@torch.no_grad()
def refresh_merged(plain: torch.nn.Module, model: torch.nn.Module) -> None:
    """Write W + s·B·A of each of `model`'s adapted weights into `plain`'s (in place, so CUDA graphs that
    read them stay valid), summed in fp32 and rounded once to the weight's dtype."""
    for name, layer in adapted_layers(model).items():
        w = layer.get_base_layer().weight
        delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
        plain.get_submodule(name).weight.copy_(w.float() + delta)


def load_adapter(model: torch.nn.Module, folder: str | Path) -> None:
    """Load the adapter weights that `save_pretrained` wrote into `folder` into the peft model `model`."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_FILE
    if not path.exists():
        raise ValueError(f"{folder} holds no LoRA adapter ({ADAPTER_FILE}): it was not written by a use_peft=True run")
    state = load_file(str(path), device=str(next(model.parameters()).device))
    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        raise ValueError(f"the adapter in {folder} does not fit this model (another lora_r or lora_target_modules?): "
                         f"missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}")
    set_peft_model_state_dict(model, state)

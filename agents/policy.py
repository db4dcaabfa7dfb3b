"""The policy: any transformers causal LM with its tokenizer, on the right device and dtype.

`Policy.from_pretrained(path_or_id)` is the path for real models. `Policy.tiny()` is the embedded
default: a small Qwen2-architecture model built from a config with the built-in byte tokenizer,
so everything runs offline on a CPU.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from thinkgym.envs.tokenizer import builtin_tokenizer, resolve_tokenizer

TINY_CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True,
                   rope_theta=10000.0, rms_norm_eps=1e-6)


@functools.cache
def _cache_parameter(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The KV cache as a keyword argument of `model.forward`, under the name that forward takes:
    transformers renamed `past_key_values` to `cache` (5.2x; the old name warns until 5.40)."""
    return {_cache_parameter(type(model).forward): cache}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _holds_model(folder: Path) -> bool:
    """A model's folder (save_pretrained's `config.json`), or a LoRA adapter's (peft's `adapter_config.json`)."""
    return (folder / "config.json").exists() or (folder / "adapter_config.json").exists()


def check_model_location(name_or_path: str) -> None:
    """Refuse at once what cannot be a model: a local path that does not exist (a name is taken for a hub id
    only when it reads `org/name` and `org` is no local folder, so no hub retries for a mistyped path), and
    a folder without a model's `config.json`, naming the subfolder to pass where it is a checkpoint or a run."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if HUB_ID.fullmatch(name_or_path) and not Path(name_or_path.split("/")[0]).is_dir():
            return  # a hub id
        raise ValueError(f"model folder {name_or_path!r} does not exist (a hub id reads org/name; `tiny` is the embedded default)")
    if not path.is_dir() or _holds_model(path):
        return
    if _holds_model(path / "policy"):
        raise ValueError(f"{name_or_path!r} is a checkpoint folder; its model is in {str(path / 'policy')!r}")
    steps = sorted(int(m.group(1)) for p in path.glob("checkpoint-*")
                   if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and _holds_model(p / "policy"))
    if steps:
        raise ValueError(f"{name_or_path!r} is a run folder; pass one of its checkpoints' policy folders, "
                         f"e.g. the newest, {str(path / f'checkpoint-{steps[-1]}' / 'policy')!r}")
    raise ValueError(f"{name_or_path!r} holds no model (no config.json): pass a folder written by save_pretrained, "
                     "a checkpoint's policy folder, a hub id or `tiny`")


class Policy:
    """A causal LM and its tokenizer; the agent's unit of saving, loading and generating."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.dtype = dtype or default_dtype(self.device)
        vocab = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > vocab:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {vocab} rows: "
                             "they do not belong together (pass the model's own tokenizer)")
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @classmethod
    def tiny(cls, seed: int = 0, device: str | None = None, dtype: torch.dtype | None = None, **overrides: Any) -> "Policy":
        """The embedded default: a small random Qwen2 model with the built-in tokenizer."""
        tok = builtin_tokenizer()
        cfg = Qwen2Config(vocab_size=64 * ((len(tok) + 63) // 64), bos_token_id=tok.eos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, **{**TINY_CONFIG, **overrides})
        torch.manual_seed(seed)
        return cls(Qwen2ForCausalLM(cfg), tok, device, dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, dtype: torch.dtype | str | None = None,
                        tokenizer: Any = None, seed: int = 0) -> "Policy":
        """Load a model and its tokenizer from a local folder or a hub id (`"tiny"` builds the default,
        initialised from `seed`)."""
        if name_or_path == "tiny":
            return cls.tiny(seed=seed, device=device, dtype=dtype)
        check_model_location(name_or_path)
        try:
            tok = resolve_tokenizer(tokenizer or name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype=dtype if not isinstance(dtype, str) else getattr(torch, dtype))
        except (OSError, ValueError) as exc:
            where = "folder" if Path(name_or_path).expanduser().exists() else "hub id (the hub may be unreachable from here, or the id wrong)"
            raise ValueError(f"could not load a causal LM from {name_or_path!r} as a {where}: {exc}") from exc
        return cls(model, tok, device, dtype)

    def save_pretrained(self, path: str | Path) -> None:
        """Weights as safetensors, the config and the tokenizer, loadable by `from_pretrained`."""
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))

    def check_prompt(self, prompt_len: int, max_new_tokens: int) -> None:
        """Refuse a request that would not fit the model's context, instead of truncating it."""
        if prompt_len + max_new_tokens > self.max_context:
            raise ValueError(f"a prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                             f"context of {self.max_context} tokens; shorten the prompt or lower the budget")

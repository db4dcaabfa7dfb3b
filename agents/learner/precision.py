"""AdamW with fp32 master weights, for a model held in bf16 or fp16.

On a GPU the policy lives in bf16, so that rollouts read half the bytes. But an AdamW step at the
learning rates of RL recipes (1e-6) moves a weight by about 1% of the spacing between bf16 numbers
next to it (2^-8 relative), and such updates round away: the model would never change.
`MasterAdamW` keeps an fp32 copy of every 16-bit parameter, steps on the copy, and writes the
rounded result back into the model in place, so engines and CUDA graphs that read the model's
tensors see the new weights. fp32 parameters are stepped directly, as plain AdamW would.

A master follows its parameter whenever the model was changed outside the optimizer (an SFT warm
start, a broadcast from rank 0, weights loaded on resume): each step first checks that the model
still holds the masters' rounded values.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch


class MasterAdamW(torch.optim.AdamW):
    def __init__(self, params: Iterable[torch.nn.Parameter], **adamw_kwargs: Any):
        self.model_params = [p for p in params if p.requires_grad]
        self.masters = [p if p.dtype == torch.float32 else p.detach().float() for p in self.model_params]
        super().__init__(self.masters, **adamw_kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterAdamW does not take a closure")
        for p, m in zip(self.model_params, self.masters):
            if m is not p:
                if not torch.equal(p, m.to(p.dtype)):
                    m.copy_(p)
                m.grad = None if p.grad is None else p.grad.float()
        super().step()
        for p, m in zip(self.model_params, self.masters):
            if m is not p:
                p.copy_(m)
                m.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """AdamW's state plus the fp32 masters, so a resumed run keeps the bits that bf16 drops."""
        sd = super().state_dict()
        sd["master_weights"] = [m.detach().clone() for p, m in zip(self.model_params, self.masters) if m is not p]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights", [])
        ours = [m for p, m in zip(self.model_params, self.masters) if m is not p]
        if saved and len(saved) != len(ours):
            raise ValueError(f"the checkpoint has {len(saved)} fp32 master weights but this model has {len(ours)} 16-bit parameters")
        with torch.no_grad():
            for m, s in zip(ours, saved):
                m.copy_(s)
        super().load_state_dict(state_dict)


def lr_schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor at optimizer step s: linear warm-up over `warmup` steps, then
    `constant`, `linear` (to 0 at `total`) or `cosine` decay."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        frac = (s - warmup) / max(1, total - warmup)
        return {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[kind]
    return factor


def build_optimizer(model: torch.nn.Module, lr: float, schedule: Callable[[int], float],
                    weight_decay: float = 0.0) -> tuple[MasterAdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The one optimizer set-up of GRPO, SFT and REDI: AdamW over fp32 master weights (fused on a GPU)
    and a LambdaLR schedule."""
    opt = MasterAdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=next(model.parameters()).is_cuda)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)

"""R2R's token router: decides from the small model's own state whether the next token needs the large one.

The inputs are what the small model has at hand when it samples a token (R2R, arXiv 2505.21600): its
last hidden state, the input embedding of the token it sampled, and its top-k logits sorted descending
(a shape of its confidence that does not depend on which token it is). A few residual pre-LN MLP blocks
give one logit; the router fires when sigmoid(logit) >= tau. It is trained with BCE weighted by
#neg/#pos because divergent tokens are rare, and tau is picked for a target recall of the divergent
class: a missed divergence costs a wrong answer, a false alarm only one large-model call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass
class RouterConfig:
    hidden_size: int        # the small model's hidden size (= its embedding size)
    top_k: int = 100
    width: int = 256
    n_blocks: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden_size", "top_k", "width", "n_blocks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")


class _Block(nn.Module):
    """x + MLP(LN(x)), the MLP 4x wide with GELU."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Router(nn.Module):
    """The neural routing rule; `threshold` (tau) is part of its saved state."""

    def __init__(self, config: RouterConfig, threshold: float = 0.5):
        super().__init__()
        self.config = config
        self.threshold = float(threshold)
        h = config.hidden_size
        self.topk_proj = nn.Linear(config.top_k, h)
        self.inp = nn.Linear(3 * h, config.width)
        self.blocks = nn.Sequential(*[_Block(config.width, config.dropout) for _ in range(config.n_blocks)])
        self.head = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, 1))

    def topk(self, logits: torch.Tensor) -> torch.Tensor:
        """The k largest logits, sorted descending (k is capped by the vocabulary; the rest zero-padded)."""
        k = min(self.config.top_k, logits.shape[-1])
        vals = logits.float().topk(k, dim=-1).values
        return nn.functional.pad(vals, (0, self.config.top_k - k))

    def forward(self, hidden: torch.Tensor, token_emb: torch.Tensor, topk_logits: torch.Tensor) -> torch.Tensor:
        """Routing logit [B] from features; `topk_logits` may hold more columns than k (the first k are used)."""
        dt = self.topk_proj.weight.dtype
        x = torch.cat([hidden.to(dt), token_emb.to(dt), self.topk_proj(topk_logits[..., : self.config.top_k].to(dt))], -1)
        return self.head(self.blocks(self.inp(x))).squeeze(-1)

    @torch.no_grad()
    def decide(self, hidden: torch.Tensor, token_emb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(hidden, token_emb, self.topk(logits)).float()) >= self.threshold

    def save(self, path: str | Path) -> None:
        torch.save({"config": asdict(self.config), "threshold": self.threshold, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Router":
        ck = torch.load(path, map_location=map_location, weights_only=True)
        r = cls(RouterConfig(**ck["config"]), ck["threshold"])
        r.load_state_dict(ck["state"])
        return r.eval()


class RateRouter:
    """Routes each token with a fixed probability: a stand-in for a trained router when only the routing
    rate matters (speed benchmarks), and the always/never extremes (`rate=1` / `rate=0`)."""

    def __init__(self, rate: float, seed: int = 0):
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1]; got {rate!r}")
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)

    def decide(self, hidden: torch.Tensor, token_emb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        draw = torch.rand(hidden.shape[0], generator=self.generator)
        return (draw < self.rate).to(hidden.device)


def binary_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Recall, precision, false-positive rate and positive (routing) rate of boolean predictions."""
    pred, label = np.asarray(pred, bool), np.asarray(label, bool)
    tp, fp = int((pred & label).sum()), int((pred & ~label).sum())
    return {"recall": tp / max(1, int(label.sum())), "precision": tp / max(1, tp + fp),
            "fpr": fp / max(1, int((~label).sum())), "positive_rate": float(pred.mean()) if pred.size else 0.0}


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_recall: float = 0.95,
                     taus: np.ndarray | None = None) -> float:
    """R2R's rule: among tau in 100 values over [0.01, 0.99] whose recall is >= the target, the one with the
    lowest false-positive rate (ties: the highest tau). If none reaches the target, the lowest tau."""
    taus = np.linspace(0.01, 0.99, 100) if taus is None else np.asarray(taus)
    best, best_fpr = None, np.inf
    for tau in taus:
        m = binary_metrics(probs >= tau, labels)
        if m["recall"] >= target_recall and m["fpr"] <= best_fpr:
            best, best_fpr = float(tau), m["fpr"]
    return best if best is not None else float(taus.min())


@torch.no_grad()
def router_probs(router: Router, hidden: torch.Tensor, token_emb: torch.Tensor, topk_logits: torch.Tensor,
                 batch_size: int = 4096) -> np.ndarray:
    router.eval()
    out = [torch.sigmoid(router(hidden[i:i + batch_size], token_emb[i:i + batch_size], topk_logits[i:i + batch_size]))
           for i in range(0, len(hidden), batch_size)]
    return torch.cat(out).float().numpy() if out else np.zeros(0)


def train_router(train: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], config: RouterConfig | None = None,
                 target_recall: float = 0.95, epochs: int = 30, lr: float = 1e-3, weight_decay: float = 5e-4,
                 batch_size: int = 256, patience: int = 6, seed: int = 0) -> Router:
    """Fit on `train` (tensors hidden, token_emb, topk_logits, label), keep the epoch with the best validation
    loss, then set tau on `valid` for `target_recall`."""
    y = train["label"].float()
    pos = float(y.sum())
    if pos == 0 or pos == len(y):
        raise ValueError(f"the training labels need both classes; got {int(pos)} divergent of {len(y)}")
    torch.manual_seed(seed)
    config = config or RouterConfig(hidden_size=train["hidden"].shape[-1], top_k=min(100, train["topk_logits"].shape[-1]))
    router = Router(config)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - pos) / pos))
    opt = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=weight_decay)
    feats = (train["hidden"], train["token_emb"], train["topk_logits"])
    vfeats = (valid["hidden"], valid["token_emb"], valid["topk_logits"])
    best, best_loss, since = None, np.inf, 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        router.train()
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            loss = loss_fn(router(*(f[idx] for f in feats)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        router.eval()
        with torch.no_grad():
            vloss = float(loss_fn(router(*vfeats), valid["label"].float()))
        if vloss < best_loss:
            best, best_loss, since = {k: v.clone() for k, v in router.state_dict().items()}, vloss, 0
        elif (since := since + 1) >= patience:
            break
    router.load_state_dict(best)
    router.threshold = choose_threshold(router_probs(router, *vfeats), valid["label"].numpy(), target_recall)
    return router.eval()

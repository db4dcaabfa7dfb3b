"""Static-cache decoding, replayed as CUDA graphs on a GPU: the fast path of the `hf` engine.

A decode step of a 0.5B–1.5B model is a few hundred small kernels, so launching them from Python
costs more than running them (`../shared/specs/performance_anchors.md` §1.3: plain `generate` is
30–45x below a CUDA-graph loop). A CUDA graph needs fixed shapes and addresses, so:

- the K/V cache is preallocated once (`SlotCache`): row r, slot s holds the token at column s of
  the left-padded batch, and every row writes its next token to the same slot; or, for the engine's
  refill (`step_rows`), each row writes at its own slot `row_slot[r]`, so a row prefilled into a
  freed place starts at slot 0 while the others go on;
- attention is `slot_attention`, registered with transformers' `AttentionInterface`. It reads only
  the first `mask.shape[-1]` slots, so one graph per (rows, slots) bucket serves a range of
  lengths, and it lets SDPA handle grouped-query heads instead of copying K/V per query head, as
  transformers' `sdpa` does whenever there is a mask;
- finished rows stay in place until at most half the batch is live; the live rows are then packed
  to the front and the next smaller graph takes over;
- Llama-family models prefill and decode with `FusedStep`, the same forward with each layer's small
  kernels fused (compiled on a GPU); others run their transformers forward.

Any causal LM whose attention goes through `AttentionInterface` (Llama, Qwen2/3, Mistral, ...)
and which has no sliding-window layers can use it; `supports_static` says whether one does.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel

from ...policy import cache_kwargs
from ..sampling import to_device
from .fused_step import FusedStep, supports_fused

ATTENTION = "thinkgym_slots"
SLOT_BUCKET = 64  # the finest step between cache lengths with graphs; a step reads half of one past its context on average
PREFILL_MASK_ELEMS = 1 << 28  # rows x width^2 per prefill chunk, to bound the mask and scores


def slot_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor, scaling: float | None = None, dropout: float = 0.0,
                   **kwargs) -> tuple[torch.Tensor, None]:
    """Attention over the cache's first `attention_mask.shape[-1]` slots, with an additive mask.

    SDPA with `enable_gqa` reads each K/V head once for its group of query heads; it measured
    2.3x faster than two batched matmuls, and 20x faster than repeating K/V per query head
    (`benchmarks/gpu/attention_decode.py`)."""
    slots = attention_mask.shape[-1]
    out = F.scaled_dot_product_attention(query, key[:, :, :slots], value[:, :, :slots], attn_mask=attention_mask, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2), None


AttentionInterface.register(ATTENTION, slot_attention)


def supports_static(model: PreTrainedModel) -> bool:
    """Whether the model's attention is pluggable and full (no sliding-window layers)."""
    cfg = model.config.get_text_config()
    full = all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"]))
    return full and model._can_set_attn_implementation()


class SlotCache:
    """K/V for `rows x slots`, allocated once; a forward writes slots `write` of rows `rows`.

    `write` is the slots every row writes, or None: then row r writes slot `row_slot[r]` (one token per
    row, a decode step). It implements the one cache method the model calls, `update`, so its tensors
    keep their addresses for CUDA graphs."""

    def __init__(self, model: PreTrainedModel, rows: int, slots: int):
        cfg = model.config.get_text_config()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(model.parameters())
        shape = (rows, cfg.num_key_value_heads, slots, head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.n_rows, self.n_slots = rows, slots
        self.rows = slice(0, rows)
        self.step_slot = torch.zeros(1, dtype=torch.long, device=p.device)  # a fixed address for CUDA graphs
        self.row_slot = torch.zeros(rows, dtype=torch.long, device=p.device)  # each row's own write slot, likewise
        self.write: torch.Tensor | None = self.step_slot

    @staticmethod
    def bytes_per_slot(model: PreTrainedModel) -> int:
        cfg = model.config.get_text_config()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * next(model.parameters()).element_size()

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.k[layer_idx][self.rows], self.v[layer_idx][self.rows]
        if self.write is None:
            at = self.row_slot[self.rows].view(-1, 1, 1, 1).expand_as(key)
            k.scatter_(2, at, key)
            v.scatter_(2, at, value)
        else:
            k.index_copy_(2, self.write, key)
            v.index_copy_(2, self.write, value)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly

    def pack(self, src: torch.Tensor) -> None:
        """Move rows `src` to the front, in order."""
        for t in self.k + self.v:
            t[:len(src)] = t.index_select(0, src)


class StaticDecoder:
    """Prefill and decode steps over a `SlotCache`; decode steps are CUDA graphs when `graphs`, and both
    run `FusedStep` when `fused` and the model supports it (compiled when `graphs`)."""

    def __init__(self, model: PreTrainedModel, rows: int, slots: int, graphs: bool, fused: bool = True):
        self.model, self.graphs = model, graphs
        self.fused = FusedStep(model, compile=graphs) if fused and supports_fused(model) else None
        self.cache = SlotCache(model, rows, slots)
        dev = self.cache.write.device
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.dtype = self.cache.k[0].dtype
        self.bias = torch.zeros((rows, slots), dtype=self.dtype, device=dev)  # 0 where a row may attend, else -max
        self.advance = torch.zeros(rows, dtype=torch.long, device=dev)  # 1 for rows that `step_rows` moves on, 0 for idle ones
        self._graphs: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs else None

    def fits(self, rows: int, slots: int) -> bool:
        return rows <= self.cache.n_rows and slots <= self.cache.n_slots

    def bucket_rows(self, n: int) -> int:
        """The batch a decode step runs at with `n` live rows."""
        return min(1 << (n - 1).bit_length(), self.cache.n_rows) if self.graphs else n

    def bucket_slots(self, n: int) -> int:
        """The cache length a step attends over: `n` rounded up by at most 1/8 (at least SLOT_BUCKET
        slots), so a trace of any length needs about 8 graphs per doubling and reads <= 12.5% extra."""
        if not self.graphs:
            return n
        step = max(SLOT_BUCKET, (1 << (n.bit_length() - 1)) // 8)
        return min(-(-n // step) * step, self.cache.n_slots)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, at: int = 0, refresh: bool = True) -> torch.Tensor:
        """Left-padded prompts [B, W] with their 0/1 mask, into rows `at`.. -> last-position logits [B, V].

        It runs in chunks of rows and of query positions, so that no mask or score tensor holds
        more than PREFILL_MASK_ELEMS entries per head, however long the prompts. `refresh` recopies the
        fused step's packed weights: the first prefill of an engine call does, as the weights may have
        changed since the last."""
        B, W = ids.shape
        if self.fused is not None and refresh:
            self.fused.refresh()
        end = at + B
        self.bias[at:end].fill_(torch.finfo(self.dtype).min)
        self.bias[at:end, :W].masked_fill_(mask.bool(), 0.0)
        self.pos[at:end, 0] = mask.sum(-1)
        self.cache.row_slot[at:end] = W
        self.advance[at:end] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dtype, dev = self.dtype, ids.device
        rows = max(1, min(B, PREFILL_MASK_ELEMS // (W * W)))
        span = max(1, min(W, PREFILL_MASK_ELEMS // (rows * W)))
        keys = torch.arange(W, device=dev)
        out = []
        for a in range(0, B, rows):
            self.cache.rows = slice(at + a, at + min(B, a + rows))
            for q in range(0, W, span):
                e = min(W, q + span)
                qpos = keys[q:e, None]
                allowed = (keys[None, :e] <= qpos) & mask[a:a + rows, None, None, :e].bool() | (keys[None, :e] == qpos)  # pad queries see themselves
                m4 = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, torch.finfo(dtype).min)
                self.cache.write = keys[q:e]
                logits = self._forward_chunk(ids[a:a + rows, q:e], pos[a:a + rows, q:e], m4)
            out.append(logits)
        self.cache.write = self.cache.step_slot
        return torch.cat(out)

    @torch.no_grad()
    def step(self, rows: int, slot: int) -> torch.Tensor:
        """One decode step of the first `rows` rows, whose tokens are in `ids`, writing `slot`."""
        self.cache.step_slot.fill_(slot)
        self.bias[:, slot] = 0.0
        out = self._run((rows, self.bucket_slots(slot + 1), False))
        self.pos[:rows] += 1
        return out

    @torch.no_grad()
    def step_rows(self, rows: int, slots: int) -> torch.Tensor:
        """One decode step of the first `rows` rows, whose tokens are in `ids`, each writing its own slot
        `cache.row_slot[r]` (all below `slots`), then moving on by `advance[r]`."""
        self.bias[:rows].scatter_(1, self.cache.row_slot[:rows, None], 0.0)
        out = self._run((rows, self.bucket_slots(slots), True))
        self.pos[:rows, 0] += self.advance[:rows]
        self.cache.row_slot[:rows] += self.advance[:rows]
        return out

    def vacate(self, rows: list[int]) -> None:
        """Idle rows `rows`: `step_rows` keeps them writing slot 0 of their own row, and their logits are
        not read, until a prefill takes their place."""
        if rows:
            at = to_device(rows, self.advance.device)
            self.cache.row_slot[at] = 0
            self.advance[at] = 0

    def _run(self, key: tuple[int, int, bool]) -> torch.Tensor:
        """A decode step of shape `key` (rows, slots, per-row write slots): a graph's replay, its capture, or eager."""
        if key in self._graphs:
            graph, logits = self._graphs[key]
            graph.replay()
            out = logits
        elif self.graphs:
            out = self._capture(key)
        else:
            out = self._forward(*key)
        return out

    def pack(self, src: torch.Tensor) -> None:
        self.cache.pack(src)
        n = len(src)
        for t in (self.bias, self.pos, self.advance, self.cache.row_slot):
            t[:n] = t.index_select(0, src)

    def _forward(self, rows: int, slots: int, per_row: bool) -> torch.Tensor:
        self.cache.rows = slice(0, rows)
        self.cache.write = None if per_row else self.cache.step_slot
        return self._forward_chunk(self.ids[:rows], self.pos[:rows], self.bias[:rows, None, None, :slots])

    def _forward_chunk(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits at the last of `ids`' positions, writing their K/V to the cache's rows and write slots."""
        if self.fused is not None:
            return self.fused(ids, pos, self.cache, slot_attention, mask)
        return self.model(input_ids=ids, position_ids=pos, attention_mask=mask, **cache_kwargs(self.model, self.cache),
                          use_cache=True, logits_to_keep=1).logits[:, -1]

    def _capture(self, key: tuple[int, int, bool]) -> torch.Tensor:
        """Run this step eagerly on a side stream (which also warms up), then record it as a graph."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self._forward(*key)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # "thread_local": the asynchronous trainer's rollout thread captures while the learner's thread keeps
            # allocating and launching; the default "global" mode would make those calls fail during the capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                logits = self._forward(*key)  # recorded, not run: it rewrites the K/V just written
        except RuntimeError as e:
            warnings.warn(f"CUDA graph capture failed ({e}); decoding without graphs", stacklevel=2)
            self.graphs = False
            return out
        self._graphs[key] = (graph, logits)
        return out

"""The `hf` rollout engine: batched sampling with a KV cache on any transformers causal LM.

It is its own decode loop rather than `model.generate` because rollouts need what `generate`
does not give together: a budget and stop strings per request, the log-probability of each
sampled token, forced response prefixes, and finished rows leaving the batch.

Models whose attention is pluggable decode over a preallocated cache (`static_cache`), with each
step replayed as a CUDA graph on a GPU; any other causal LM uses transformers' `DynamicCache`.

By default the static path runs the rows in batches that fit the K/V budget, one after the other, and a
finished row's place stays idle until half the batch has finished. With `refill`, one decoder run takes
all the rows: a finished row's place is prefilled with a pending request (another row, or, through
`stream`, the next chunk of a trace), and the batch steps down only when nothing is pending.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from ... import lora
from ...policy import Policy, cache_kwargs
from ..engine import Completion, FollowUp, GenerationRequest, stream_in_rounds
from ..sampling import STOP_WINDOW, TorchSampler, find_stop, force_prefixes, sample_tokens, to_device
from .static_cache import ATTENTION, SLOT_BUCKET, SlotCache, StaticDecoder, supports_static


@dataclass
class DecodeRow:
    """One sequence being decoded: what it wrote so far, and why it stopped once it has."""

    prompt: list[int]
    req: GenerationRequest
    out: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    finish: str | None = None
    eos_logp: float | None = None
    key: Hashable = None  # the `stream` key it belongs to

    def add(self, token: int, logp: float, eos: int, tokenizer) -> bool:
        """Record a sampled token (an EOS ends the row, with its log-probability kept apart from `out`);
        return True while the row keeps generating."""
        if token == eos and not self.req.ignore_eos:
            self.finish, self.eos_logp = "eos", logp
            return False
        self.out.append(token)
        self.logps.append(logp)
        if self.req.stop and find_stop(tokenizer.decode(self.out[-STOP_WINDOW:], skip_special_tokens=False), self.req.stop) is not None:
            self.finish = "stop"
        elif len(self.out) >= self.req.max_new_tokens:
            self.finish = "length"
        return self.finish is None


def request_rows(requests: list[GenerationRequest], row_type: type[DecodeRow] = DecodeRow) -> list[DecodeRow]:
    """One decode row per sample to draw: each request's `n` rows, in request order."""
    return [row_type(list(req.prompt_ids), req) for req in requests for _ in range(req.n)]


def per_request(requests: list[GenerationRequest], rows: list[DecodeRow], make: Callable[[DecodeRow], Any]) -> list[list[Any]]:
    """The rows' completions (`make(row)`) grouped back into their requests, `request_rows`' order."""
    done = iter(rows)
    return [[make(next(done)) for _ in range(req.n)] for req in requests]


def left_pad(rows: list[DecodeRow], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Prompts left-padded, so every row's last token is in the last column, with their 0/1 mask,
    temperatures and top-p: the decode loops' starting batch."""
    width = max(len(r.prompt) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
        mask[i, width - len(r.prompt):] = 1
    temp = torch.tensor([r.req.temperature for r in rows], device=device, dtype=torch.float)
    top_p = torch.tensor([r.req.top_p for r in rows], device=device, dtype=torch.float)
    return ids.to(device), mask.to(device), temp, top_p


class HostTokens:
    """The sampled tokens and log-probabilities on their way to the host.

    On a GPU the copy is asynchronous, so the host can launch the next decode step before it reads
    them; `get` waits for this copy only, not for the work queued after it."""

    def __init__(self, tokens: torch.Tensor, logps: torch.Tensor):
        cuda = tokens.is_cuda
        self.tokens, self.logps = tokens.to("cpu", non_blocking=cuda), logps.to("cpu", non_blocking=cuda)
        self.done = torch.cuda.Event() if cuda else None
        if cuda:
            self.done.record()

    def get(self) -> tuple[list[int], list[float]]:
        if self.done is not None:
            self.done.synchronize()
        return self.tokens.tolist(), self.logps.tolist()


class HFEngine(TorchSampler):
    """Generates with the policy's own model, so its weights are always current.

    `static_cache` (default: when the model supports it) decodes over a preallocated cache of at most
    `kv_cache_gb` (default: a quarter of the GPU, or 4 GB on the CPU), which also bounds how many rows
    decode at once; `cuda_graphs` (default: on a GPU) replays its decode steps as CUDA graphs; `fused`
    decodes Llama-family models with `FusedStep`, compiled when there are graphs. The cache and graphs
    are kept between calls, and read the weights in place after optimizer steps.

    `refill` (static cache only; off by default, as it draws the sampling noise for other batches than
    the default path, so a seed's samples change) decodes all rows in one run whose finished rows hand
    their places to pending ones, and serves `stream` natively; otherwise `stream` runs in rounds.

    A LoRA policy (peft) is decoded as the learner runs it, adapter applied in each adapted layer, unless
    `lora_merge`: then the engine decodes a copy whose adapted weights have the adapter merged in
    (`lora.merged_copy`), with the fused kernels, and `sync_weights` re-merges them. Merging rounds the
    adapter's small change into the 16-bit weights, so its log-probabilities are no longer the
    learner's (`logprobs_are_trainers` is False, and the learner recomputes them).

    Its log-probabilities are taken as the learner's only in fp32, where they were measured equal to
    about 1e-6. In bf16 the decode kernels (cache, fused step, a batch of one token per row) round
    differently from the learner's forward: 0.023 mean, 0.112 max |log ratio| on the 1.5B shape on
    an H100 (issue 32), so there the learner recomputes them."""

    logprobs_are_trainers = True

    def __init__(self, policy: Policy, max_batch_size: int = 256, seed: int | None = None,
                 static_cache: bool | None = None, cuda_graphs: bool | None = None, kv_cache_gb: float | None = None,
                 fused: bool = True, lora_merge: bool = False, refill: bool = False):
        self.policy = policy
        self.max_batch_size = max_batch_size
        super().__init__(policy.device, seed)
        if lora_merge and not lora.is_adapted(policy.model):
            raise ValueError("lora_merge=True needs a policy with a LoRA adapter (use_peft=True)")
        self._merged = lora.merged_copy(policy.model) if lora_merge else None
        self.logprobs_are_trainers = policy.dtype == torch.float32 and not lora_merge
        cuda = policy.device.type == "cuda"
        self.static_cache = supports_static(self.model) if static_cache is None else static_cache
        self.cuda_graphs = (cuda and self.static_cache) if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not (cuda and self.static_cache):
            raise ValueError("cuda_graphs=True needs a CUDA device and static_cache=True")
        if kv_cache_gb is None:
            kv_cache_gb = torch.cuda.get_device_properties(policy.device).total_memory / 4e9 if cuda else 4.0
        self.kv_cache_bytes = int(kv_cache_gb * 1e9)
        self.fused = fused
        self.refill = refill and self.static_cache
        self._decoder: StaticDecoder | None = None

    @property
    def model(self) -> torch.nn.Module:
        """The transformers model that decodes: the policy's own (a peft model's base, adapter inside), or the merged copy."""
        return self._merged if self._merged is not None else lora.base_model(self.policy.model)

    def sync_weights(self) -> None:
        """Re-merge the adapter into the merged copy; otherwise nothing: the engine reads the training
        model's parameters directly."""
        if self._merged is not None:
            lora.refresh_merged(self._merged, self.policy.model)

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        """Free the static cache and its graphs (they are rebuilt on the next call)."""
        self._decoder = None
        if self.policy.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        for req in requests:
            self.policy.check_prompt(len(req.prompt_ids), req.max_new_tokens)
        rows = request_rows(requests)
        model = self.model
        training = model.training
        model.eval()  # no dropout, and no gradient checkpointing (which would drop the KV cache)
        try:
            if rows and self.refill:
                self._run_refill(rows)
            elif rows and self.static_cache:
                self._run_all_static(rows)
            else:
                for i in range(0, len(rows), self.max_batch_size):
                    self._run_dynamic(rows[i:i + self.max_batch_size])
        finally:
            model.train(training)
        return per_request(requests, rows, self._completion)

    def _completion(self, row: DecodeRow) -> Completion:
        return Completion(row.out, self.policy.tokenizer.decode(row.out, skip_special_tokens=False), row.logps, row.finish,
                          row.eos_logp)

    @torch.no_grad()
    def stream(self, requests: Mapping[Hashable, GenerationRequest], follow_up: FollowUp) -> None:
        """`engine.stream`: with `refill`, each key's follow-up joins the running batch as soon as its
        request finishes; otherwise in rounds of `generate`."""
        if not self.refill:
            return stream_in_rounds(self, requests, follow_up)
        rows = [row for key, req in requests.items() for row in self._stream_rows(key, req)]

        def next_rows(row: DecodeRow) -> list[DecodeRow]:
            nxt = follow_up(row.key, self._completion(row))
            return [] if nxt is None else self._stream_rows(row.key, nxt)

        model = self.model
        training = model.training
        model.eval()
        try:
            self._run_refill(rows, next_rows)
        finally:
            model.train(training)

    def _stream_rows(self, key: Hashable, req: GenerationRequest) -> list[DecodeRow]:
        if req.n != 1:
            raise ValueError(f"stream takes requests of n=1 (one trace per key); got n={req.n}")
        self.policy.check_prompt(len(req.prompt_ids), req.max_new_tokens)
        return [DecodeRow(list(req.prompt_ids), req, key=key)]

    def _sample(self, rows: list[DecodeRow], live: list[int], logits: torch.Tensor, temp: torch.Tensor,
                top_p: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each live row and its log-probability: sampled, or forced by a prefix."""
        truncate = any(rows[ri].req.top_p < 1 for ri in live)
        tokens, logps = sample_tokens(logits, temp, top_p, self.generator, truncate)
        force_prefixes((rows[ri].req.prefix_ids for ri in live), step, tokens, logps, logits, temp)
        return tokens, logps

    def _record(self, rows: list[DecodeRow], live: list[int], sampled: HostTokens) -> list[int]:
        """Add each live row's token; return the indices into `live` of the rows that keep generating."""
        host_tokens, host_logps = sampled.get()
        eos, tok = self.policy.eos_token_id, self.policy.tokenizer
        return [b for b, ri in enumerate(live) if rows[ri].add(host_tokens[b], host_logps[b], eos, tok)]

    def _run_all_static(self, rows: list[DecodeRow]) -> None:
        model = self.model
        slots = max(len(r.prompt) for r in rows) + max(r.req.max_new_tokens for r in rows)
        per_row = slots * SlotCache.bytes_per_slot(model)
        batch = max(1, min(self.max_batch_size, len(rows), self.kv_cache_bytes // per_row))
        with self.static_attention():
            for i in range(0, len(rows), batch):
                self._run_static(rows[i:i + batch])

    @contextmanager
    def static_attention(self) -> Iterator[None]:
        """The model attends with `slot_attention` inside this block (its own setting is restored after)."""
        model = self.model
        previous = model.config._attn_implementation
        model.set_attn_implementation(ATTENTION)
        try:
            yield
        finally:
            model.set_attn_implementation(previous)

    def static_decoder(self, n_rows: int, slots: int) -> StaticDecoder:
        """The kept decoder if it is big enough, else a new one (rows and slots rounded up, for reuse)."""
        rows = 1 << (n_rows - 1).bit_length() if self.cuda_graphs else n_rows
        if self._decoder is None or not self._decoder.fits(rows, slots):
            self.release()
            self._decoder = StaticDecoder(self.model, rows, -(-slots // SLOT_BUCKET) * SLOT_BUCKET, self.cuda_graphs,
                                          self.fused)
        return self._decoder

    def _run_static(self, rows: list[DecodeRow]) -> None:
        ids, mask, temp, top_p = left_pad(rows, self.policy.tokenizer.pad_token_id, self.policy.device)
        width = ids.shape[1]
        dec = self.static_decoder(len(rows), width + max(r.req.max_new_tokens for r in rows))
        logits = dec.prefill(ids, mask)
        live = list(range(len(rows)))    # row index of each live row
        where = torch.arange(len(rows), device=ids.device)  # its batch position in the decoder
        batch = dec.bucket_rows(len(rows))
        tokens, logps = self._sample(rows, live, logits, temp, top_p, 0)
        sampled = HostTokens(tokens, logps)
        step = 1
        while True:
            # Run step `step` as if every live row goes on, and only then read the tokens of the step
            # before: the host's bookkeeping overlaps the GPU's step, and a row that has just
            # finished costs one discarded step.
            dec.ids[where, 0] = tokens
            logits = dec.step(batch, width + step - 1)
            logits = logits[where] if len(live) < batch else logits
            tokens, logps = self._sample(rows, live, logits, temp, top_p, step)
            keep = self._record(rows, live, sampled)
            if not keep:
                return
            if len(keep) < len(live):
                sel = to_device(keep, ids.device)
                tokens, logps, temp, top_p, where = tokens[sel], logps[sel], temp[sel], top_p[sel], where[sel]
                live = [live[b] for b in keep]
                if dec.bucket_rows(len(live)) < batch:  # pack the live rows and step down to a smaller graph
                    dec.pack(where)
                    where = torch.arange(len(live), device=ids.device)
                    batch = dec.bucket_rows(len(live))
            sampled = HostTokens(tokens, logps)
            step += 1

    def _sample_rows(self, rows: list[DecodeRow], logits: torch.Tensor, temp: torch.Tensor, top_p: torch.Tensor,
                     steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`_sample` for rows at their own steps (`steps[b]` tokens sampled so far)."""
        truncate = any(r.req.top_p < 1 for r in rows)
        tokens, logps = sample_tokens(logits, temp, top_p, self.generator, truncate)
        force_prefixes((r.req.prefix_ids[s:] for r, s in zip(rows, steps)), 0, tokens, logps, logits, temp)
        return tokens, logps

    def _run_refill(self, rows: list[DecodeRow], next_rows: Callable[[DecodeRow], list[DecodeRow]] | None = None) -> None:
        """Decode `rows`, and the rows `next_rows(row)` adds as each finishes, in one static decoder run per
        cache length: the run is sized for the pending rows' longest; a later row too long for it waits
        for the next run."""
        pending = deque(rows)
        with self.static_attention():
            while pending:
                slots = max(len(r.prompt) + r.req.max_new_tokens for r in pending)
                fit = self.kv_cache_bytes // (slots * SlotCache.bytes_per_slot(self.model))
                dec = self.static_decoder(max(1, min(self.max_batch_size, len(pending), fit)), slots)
                pending = deque(self._refill(dec, min(self.max_batch_size, fit), pending, next_rows))

    def _refill(self, dec: StaticDecoder, capacity: int, pending: deque[DecodeRow],
                next_rows: Callable[[DecodeRow], list[DecodeRow]] | None) -> list[DecodeRow]:
        """The refill loop over at most `capacity` of `dec`'s rows; returns the rows that need more slots than it has.

        As in `_run_static`, step t runs before the host reads step t-1's tokens: a row that has just
        finished costs one discarded step, and its place is prefilled with a pending row right after."""
        dev = self.policy.device
        capacity = max(1, min(capacity, dec.cache.n_rows))
        batch = dec.bucket_rows(min(len(pending), capacity))  # with graphs, a bucket may hold more rows than it takes
        dec.vacate(list(range(dec.cache.n_rows)))  # rows a last call left moving
        free, later = list(range(min(batch, capacity))), []
        live: list[DecodeRow] = []
        where: list[int] = []  # each live row's place in the decoder
        steps: list[int] = []  # tokens each live row has sampled (its place in a forced prefix)
        slot: list[int] = []   # the slot each live row writes next
        tokens = logps = temp = top_p = None
        sampled, refresh = None, True
        while True:
            if live:
                at = to_device(where, dev)
                dec.ids[at, 0] = tokens
                logits = dec.step_rows(batch, max(slot) + 1)[at]
                slot = [s + 1 for s in slot]
                tokens, logps = self._sample_rows(live, logits, temp, top_p, steps)
                steps = [s + 1 for s in steps]
                keep = self._record(live, list(range(len(live))), sampled)
                if len(keep) < len(live):
                    kept = set(keep)
                    gone = [b for b in range(len(live)) if b not in kept]
                    dec.vacate([where[b] for b in gone])
                    free += [where[b] for b in gone]
                    if next_rows is not None:
                        for b in gone:
                            pending.extend(next_rows(live[b]))
                    sel = to_device(keep, dev)
                    tokens, logps, temp, top_p = tokens[sel], logps[sel], temp[sel], top_p[sel]
                    live, where, steps, slot = ([xs[b] for b in keep] for xs in (live, where, steps, slot))
            if pending and not free and batch < capacity:  # follow-ups came after a step down: step up
                grown = dec.bucket_rows(min(len(live) + len(pending), capacity))
                free = list(range(batch, min(grown, capacity)))
                batch = grown
            if pending and free:
                new = self._admit(dec, pending, free, later, refresh)
                refresh = False
                if new is not None:
                    rows, places, widths, logits = new
                    t_new = torch.tensor([r.req.temperature for r in rows], device=dev, dtype=torch.float)
                    p_new = torch.tensor([r.req.top_p for r in rows], device=dev, dtype=torch.float)
                    k_new, l_new = self._sample_rows(rows, logits, t_new, p_new, [0] * len(rows))
                    if live:
                        tokens, logps = torch.cat([tokens, k_new]), torch.cat([logps, l_new])
                        temp, top_p = torch.cat([temp, t_new]), torch.cat([top_p, p_new])
                    else:
                        tokens, logps, temp, top_p = k_new, l_new, t_new, p_new
                    live, where, steps, slot = live + rows, where + places, steps + [1] * len(rows), slot + widths
            if not live:
                return later
            if not pending and dec.bucket_rows(len(live)) < batch:  # nothing to refill with: pack and step down
                dec.pack(to_device(where, dev))
                where = list(range(len(live)))
                batch = dec.bucket_rows(len(live))
                dec.vacate(list(range(len(live), dec.cache.n_rows)))  # every place but a live row's is idle
                free = list(range(len(live), min(batch, capacity)))
            sampled = HostTokens(tokens, logps)

    def _admit(self, dec: StaticDecoder, pending: deque[DecodeRow], free: list[int], later: list[DecodeRow],
               refresh: bool) -> tuple[list[DecodeRow], list[int], list[int], torch.Tensor] | None:
        """Prefill pending rows into free places (taken from `free`), each run of adjacent places as one
        left-padded batch; rows longer than the cache go to `later`. Returns the rows, their places, the
        slot each writes next and their last-position logits, or None if none was admitted."""
        take: list[tuple[int, DecodeRow]] = []
        free.sort()
        while pending and len(take) < len(free):
            r = pending.popleft()
            if len(r.prompt) + r.req.max_new_tokens > dec.cache.n_slots:
                later.append(r)
            else:
                take.append((free[len(take)], r))
        del free[:len(take)]
        if not take:
            return None
        runs: list[list[tuple[int, DecodeRow]]] = []
        for place, r in take:  # a run is adjacent places whose rows, padded to its widest prompt, fit the slots
            run = runs[-1] if runs else []
            if run and place == run[-1][0] + 1 and max(len(x.prompt) for _, x in run + [(place, r)]) + \
                    max(x.req.max_new_tokens for _, x in run + [(place, r)]) <= dec.cache.n_slots:
                run.append((place, r))
            else:
                runs.append([(place, r)])
        widths, logits = [], []
        for run in runs:
            ids, mask, _, _ = left_pad([r for _, r in run], self.policy.tokenizer.pad_token_id, self.policy.device)
            logits.append(dec.prefill(ids, mask, at=run[0][0], refresh=refresh))
            refresh = False
            widths += [ids.shape[1]] * len(run)
        return [r for _, r in take], [p for p, _ in take], widths, torch.cat(logits)

    def _run_dynamic(self, rows: list[DecodeRow]) -> None:
        model = self.model
        ids, mask, temp, top_p = left_pad(rows, self.policy.tokenizer.pad_token_id, self.policy.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kwargs(model, cache), use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        live = list(range(len(rows)))  # batch position -> row index
        step = 0
        while True:
            tokens, logps = self._sample(rows, live, logits, temp, top_p, step)
            keep = self._record(rows, live, HostTokens(tokens, logps))
            step += 1
            if not keep:
                return
            if len(keep) < len(live):  # finished rows leave the batch
                sel = torch.tensor(keep, device=ids.device)
                cache.batch_select_indices(sel)
                tokens, mask, pos, temp, top_p = tokens[sel], mask[sel], pos[sel], temp[sel], top_p[sel]
                live = [live[b] for b in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            logits = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=pos,
                           **cache_kwargs(model, cache), use_cache=True).logits[:, -1]

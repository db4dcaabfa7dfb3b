"""The learner's chunked log-probs (`completion_logprobs`): equal to the full-vocabulary path they replace
(the model's [B, L, V] logits, picked, then log-softmax) in log-probs, entropy and every parameter's
gradient, with padding, several chunks, a temperature, Qwen2 and Llama models and a LoRA adapter; one
chunk is that path bit for bit; no call of the output layer sees more than a chunk of tokens; through
DDP and FSDP2 on two ranks (gloo), chunks with gradient checkpointing give one process' gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from thinkgym.agents import distributed, lora
from thinkgym.agents.learner.logprobs import CompletionHead, completion_logprobs, pad_rows
from thinkgym.agents.policy import Policy
from thinkgym.agents.types import Row
from thinkgym.envs.tokenizer import builtin_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def full_vocabulary_logprobs(model, batch, temperature):
    """The path before chunking (505741b): every position's logits, picked, in fp32."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    B, Lc = batch.targets.shape
    pos = (torch.tensor(batch.prompt_lens).unsqueeze(1) - 1 + torch.arange(Lc)).clamp(max=logits.shape[1] - 1)
    sel = logits.gather(1, pos.unsqueeze(-1).expand(B, Lc, logits.shape[-1])).float()
    if temperature != 1.0:
        sel = sel / temperature
    logp_all = torch.log_softmax(sel, dim=-1)
    return logp_all.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def ragged_batch(vocab: int, seed: int = 0):
    """Rows of different prompt and completion lengths: right padding in both, and a masked token."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, (p, c) in enumerate([(5, 9), (11, 3), (2, 14), (8, 1)]):
        ids = torch.randint(0, vocab, (p + c,), generator=g).tolist()
        rows.append(Row(ids, p, [1] * (c - 1) + [0] if c > 1 else [1], [0.0] * c, i))
    return pad_rows(rows, 0, torch.device("cpu"))


def grads_of(model, fn, batch):
    model.zero_grad(set_to_none=True)
    logp, ent = fn(model, batch)
    ((logp * batch.loss_mask).sum() - 0.3 * (ent * batch.loss_mask).sum()).backward()
    return logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def llama():
    cfg = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float()


MODELS = {"qwen2_tied": lambda: Policy.tiny(device="cpu").model, "llama": llama,
          "qwen2_lora": lambda: lora.add_adapter(Policy.tiny(device="cpu").model, 4, 8.0)}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunks_equal_the_full_vocabulary_path_with_gradients(name, temperature):
    model = MODELS[name]()
    if name == "qwen2_lora":  # B starts at zero: move it so that the adapter changes the log-probs
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    vocab = model.get_input_embeddings().num_embeddings
    batch = ragged_batch(vocab)
    chunk = 5 * vocab  # 5 tokens a chunk: 8 chunks of the batch's 4 x 14 completion slots, the last one short
    ref = grads_of(model, lambda m, b: full_vocabulary_logprobs(m, b, temperature), batch)
    new = grads_of(model, lambda m, b: completion_logprobs(m, b, temperature, with_entropy=True, logits_per_chunk=chunk), batch)
    torch.testing.assert_close(new[0], ref[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(new[1], ref[1], rtol=0, atol=1e-5)
    assert new[2].keys() == ref[2].keys() and ref[2]
    for n in ref[2]:
        torch.testing.assert_close(new[2][n], ref[2][n], rtol=1e-5, atol=1e-5, msg=n)


def test_one_chunk_is_the_full_vocabulary_path_bit_for_bit():
    """The tiny model's micro-batches fit one chunk by default, so the CPU runs (the demo) do not move."""
    model = Policy.tiny(device="cpu").model
    batch = ragged_batch(model.config.vocab_size)
    ref = grads_of(model, lambda m, b: full_vocabulary_logprobs(m, b, 1.0), batch)
    new = grads_of(model, lambda m, b: completion_logprobs(m, b, with_entropy=True), batch)
    assert torch.equal(new[0], ref[0]) and torch.equal(new[1], ref[1])
    assert all(torch.equal(new[2][n], ref[2][n]) for n in ref[2])


def test_no_output_layer_call_sees_more_than_a_chunk(monkeypatch):
    model = Policy.tiny(device="cpu").model
    vocab = model.config.vocab_size
    batch = ragged_batch(vocab)
    seen: list[int] = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.numel() // vocab))
    logp, ent = completion_logprobs(model, batch, with_entropy=True, logits_per_chunk=3 * vocab)
    forward_calls = len(seen)
    (logp.sum() + ent.sum()).backward()
    assert forward_calls == -(-batch.targets.numel() // 3) and max(seen) == 3
    assert len(seen) == 2 * forward_calls  # backward recomputed each chunk once
    assert model.get_output_embeddings() is model.lm_head  # the model's own layer is back


def test_logging_entropy_keeps_no_graph_and_no_grad_keeps_none():
    model = Policy.tiny(device="cpu").model
    batch = ragged_batch(model.config.vocab_size)
    logp, ent = completion_logprobs(model, batch, with_entropy=True, entropy_grad=False, logits_per_chunk=model.config.vocab_size)
    assert logp.requires_grad and not ent.requires_grad
    with torch.no_grad():
        logp, ent = completion_logprobs(model, batch, logits_per_chunk=model.config.vocab_size)
    assert ent is None and not logp.requires_grad


def test_a_chunk_must_hold_a_logit():
    with pytest.raises(ValueError, match="logits_per_chunk must be a positive"):
        CompletionHead(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), 1.0, False, True, 0)


def two_rank_worker(out: Path) -> None:
    """Every rank: the same batch through an FSDP2 copy and a DDP-wrapped model, in chunks, with gradient
    checkpointing; rank 0 writes each one's largest gradient difference from one process' full-vocabulary path."""
    torch.set_num_threads(1)
    distributed.setup("cpu")
    model = Policy.tiny(device="cpu").model
    vocab = model.config.vocab_size
    batch = ragged_batch(vocab)
    ref = grads_of(Policy.tiny(device="cpu").model, lambda m, b: full_vocabulary_logprobs(m, b, 0.7), batch)[2]
    gaps = {}
    for mode in ("fsdp", "ddp"):
        if mode == "fsdp":
            trained = run = distributed.sharded_copy(model, torch.float32, gradient_checkpointing=True)
        else:
            trained = Policy.tiny(device="cpu").model
            trained.gradient_checkpointing_enable()
            run = distributed.wrap(trained.train())
        grads_of(run, lambda m, b: completion_logprobs(m, b, 0.7, with_entropy=True, logits_per_chunk=5 * vocab), batch)
        full = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for n, p in trained.named_parameters()}
        gaps[mode] = max(float((full[n] - ref[n]).abs().max()) for n in ref)  # both average identical ranks: one rank's gradient
    if distributed.world().is_main:
        (out / "gaps.json").write_text(json.dumps(gaps))
    distributed.shutdown()


@pytest.mark.slow
def test_chunks_through_ddp_and_fsdp_give_one_process_gradients(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    gaps = json.loads((tmp_path / "gaps.json").read_text())
    assert set(gaps) == {"fsdp", "ddp"} and max(gaps.values()) < 1e-5, gaps


if __name__ == "__main__":  # a rank of the two-rank test: `torchrun --nproc-per-node 2 tests/test_logprobs.py OUT`
    two_rank_worker(Path(sys.argv[1]))

"""The `hf` engine: a batched decode loop on any transformers causal LM, its preallocated K/V cache and
fused decode step, and the guarded `torch.compile` they share."""

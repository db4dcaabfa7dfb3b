"""A scripted agent against the plain reset/step API: it solves running sums through Delethink's
chunks, writing at most `info["max_new_tokens"]` tokens per step and ending with EOS at the end."""

import gymnasium as gym

import thinkgym  # noqa: F401  (registers the ids)
from thinkgym.envs import TokenAction

env = gym.make("DelethinkDemo-v0")
for seed in range(3):
    obs, info = env.reset(seed=seed)
    digits = [int(d) for d in obs.split(":")[1].split()]
    lines, acc = [f"{digits[0]}|{''.join(map(str, digits[1:]))}"], digits[0]
    for i, d in enumerate(digits[1:], start=2):
        lines.append(f"{acc}+{d}={acc + d}|{''.join(map(str, digits[i:]))}")
        acc += d
    tok = env.unwrapped.tokenizer
    ids = tok.encode("\n".join(lines) + f"\n</think>\\boxed{{{acc}}}")
    pos, done = 0, False
    while not done:  # stream the answer through the chunks the env allows
        chunk = ids[pos:pos + info["max_new_tokens"]]
        pos += len(chunk)
        obs, reward, terminated, truncated, info = env.step(TokenAction.from_ids(tok, chunk, eos=pos >= len(ids)))
        done = terminated or truncated
    print(f"seed {seed}: reward {reward}, answer {info['answer']}, chunks {info['chunks']}, "
          f"peak context {info['compute']['this']['peak_context_tokens']:.0f} tokens "
          f"(LongCoT would need {info['compute']['longcot']['peak_context_tokens']:.0f})")

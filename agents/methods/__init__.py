"""Methods built on the policy and the engines besides GRPO: SFT, REDI, trace sampling, R2R routing and
discriminator-guided planning."""

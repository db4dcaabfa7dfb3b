"""Methods built on the policy, the engines and the learner besides GRPO: REDI, trace sampling, R2R routing
and discriminator-guided planning."""

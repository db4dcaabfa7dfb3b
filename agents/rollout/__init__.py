"""Rollout: the engines that turn prompts into sampled tokens, and the collector that runs environments
through them. Nothing here imports the learner or the methods, so sampling and evaluation load neither."""

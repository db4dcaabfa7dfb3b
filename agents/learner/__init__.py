"""The GRPO learner: its config, losses, advantage estimators, log-probabilities, optimizer precision,
checkpoints and the trainer that ties them together."""

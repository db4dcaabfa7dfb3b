"""The GRPO learner: the step (`trainer.py`) and the run around it (`run.py`), its config, losses, advantage
estimators, log-probabilities, optimizer precision, checkpoints, and SFT (the warm start)."""

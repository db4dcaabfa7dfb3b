"""GRPOConfig refuses, by name, values that would silently break training, and converts YAML's values to
each field's type (PyYAML reads `1e-4` as a string) or refuses them naming the key and the type."""

import math
from dataclasses import fields

import pytest

from thinkgym.agents.cli import main, read_yaml
from thinkgym.agents.learner.config import RANGES, GRPOConfig


@pytest.mark.parametrize("values, needle", [
    ({"max_grad_norm": -1}, r"max_grad_norm must be > 0 \(inf turns clipping off\); got -1.0"),
    ({"max_grad_norm": 0}, "max_grad_norm must be > 0"),
    ({"num_generations": 1}, "num_generations must be >= 2 for advantage_estimator='grpo'"),
    ({"num_generations": 1, "advantage_estimator": "rloo"}, "num_generations must be >= 2 for advantage_estimator='rloo'"),
    ({"beta": -0.1}, "beta must be >= 0"), ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"save_every": -1}, "save_every must be >= 0"), ({"weight_decay": -0.01}, "weight_decay must be >= 0"),
    ({"temperature": 0}, "temperature must be > 0"), ({"temperature": -1.0}, "temperature must be > 0"),
    ({"epsilon_high": 0.1}, r"epsilon_high must be >= epsilon \(0.2\)"), ({"epsilon": 1.0}, r"epsilon must be in \[0, 1\)"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"), ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"learning_rate": 0}, "learning_rate must be > 0"), ({"learning_rate": math.nan}, "learning_rate must be > 0; got nan"),
    ({"learning_rate": math.inf}, "learning_rate must be > 0; got inf"), ({"sft_learning_rate": -1e-3}, "sft_learning_rate must be > 0"),
    ({"entropy_coef": -1}, "entropy_coef must be >= 0"), ({"mgpo_lambda": -1}, "mgpo_lambda must be >= 0"),
    ({"tis_cap": 0.5}, "tis_cap must be >= 1"), ({"max_completion_length": 0}, "max_completion_length must be >= 1"),
    ({"eval_temperature": -0.5}, "eval_temperature must be >= 0"), ({"seed": -3}, "seed must be >= 0"),
    ({"eval_every": 5, "eval_prompts": 0}, "eval_prompts must be >= 1 when eval_every=5"),
    ({"max_nonfinite_steps": 0}, "max_nonfinite_steps must be >= 1"), ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
    ({"lora_r": 0}, "lora_r must be >= 1"), ({"max_resample_rounds": -1}, "max_resample_rounds must be >= 0"),
    ({"output_dir": " "}, "output_dir must be a non-empty string"),
    ({"reward_params": {"laser": 3}}, r"reward_params must map each reward name to a mapping.*\['laser'\]"),
])
def test_values_that_break_training_are_refused_by_name(values, needle):
    """--max-grad-norm=-1 reversed the gradient, num_generations=1 trained on zero advantage, and the rest
    passed unchecked."""
    with pytest.raises(ValueError, match=needle):
        GRPOConfig(**values)


def test_every_numeric_field_has_a_range():
    numeric = {f.name for f in fields(GRPOConfig) if str(f.type).split(" |")[0] in ("int", "float")}
    assert numeric - set(RANGES) == {"epsilon_high"} and set(RANGES) <= numeric  # epsilon_high: >= epsilon, checked beside


def test_defaults_pass_and_the_off_values_are_accepted():
    cfg = GRPOConfig(max_grad_norm=math.inf, num_generations=1, advantage_estimator="raw", save_every=0, eval_every=0,
                     eval_prompts=0, beta=0.0, epsilon=0.2, epsilon_high=0.2)
    assert cfg.max_grad_norm == math.inf and cfg.num_generations == 1


@pytest.mark.parametrize("text, field, value", [
    ("learning_rate: 1e-4", "learning_rate", 1e-4), ("steps: '3'", "steps", 3), ("steps: 4.0", "steps", 4),
    ("temperature: 1", "temperature", 1.0), ("use_peft: 'false'", "use_peft", False), ("max_grad_norm: .inf", "max_grad_norm", math.inf),
    ("env_kwargs: '{\"chunk_size\": 8}'", "env_kwargs", {"chunk_size": 8}), ("max_completion_length: null", "max_completion_length", None),
])
def test_yaml_values_are_converted_to_the_fields_type(tmp_path, text, field, value):
    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    got = getattr(GRPOConfig.from_dict(read_yaml(str(path))), field)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text, needle", [
    ('learning_rate: "fast"', r"learning_rate must be a number; got 'fast' \(str\)"),
    ("steps: 2.5", r"steps must be an integer; got 2.5 \(float\)"),
    ("steps: [1]", r"steps must be an integer; got \[1\] \(list\)"),
    ("use_peft: 2", r"use_peft must be true or false; got 2 \(int\)"),
    ("env_kwargs: [1, 2]", r"env_kwargs must be a mapping; got \[1, 2\]"),
    ("model: 3", r"model must be a string; got 3 \(int\)"),
    ("device: 0", r"device must be a string or null; got 0 \(int\)"),
    ("- steps: 1\n- beta: 0.1", "must be a mapping of GRPOConfig keys.*got a list"),
])
def test_yaml_values_of_the_wrong_type_are_refused_naming_the_key(tmp_path, text, needle):
    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=needle):
        GRPOConfig.from_dict(read_yaml(str(path)))


def test_a_list_is_not_a_config():
    with pytest.raises(ValueError, match="a config must be a mapping of GRPOConfig keys to values; got a list"):
        GRPOConfig.from_dict([{"steps": 1}])


@pytest.mark.parametrize("args, needle", [(["--max-grad-norm=-1"], "max_grad_norm must be > 0"),
                                          (["--num-generations", "1"], "num_generations must be >= 2"),
                                          (["--temperature", "0"], "temperature must be > 0")])
def test_the_cli_refuses_them_too(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "1", "--output-dir", str(tmp_path), *args])
    assert exit_.value.code != 0
    assert needle in capsys.readouterr().err + str(exit_.value.code)

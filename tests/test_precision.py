"""fp32 master weights: small updates to a bf16 model accumulate instead of rounding away."""

import torch

from thinkgym.agents.learner.precision import MasterAdamW


def _model(dtype: torch.dtype) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(16, 16).to(dtype)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(model.weight.dtype)
    for _ in range(steps):
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


def test_plain_adamw_on_bf16_loses_rl_sized_updates_and_masters_keep_them():
    plain, master, reference = _model(torch.bfloat16), _model(torch.bfloat16), _model(torch.bfloat16).float()
    start = reference.weight.detach().clone()
    _train(plain, torch.optim.AdamW(plain.parameters(), lr=1e-6, weight_decay=0.0), 50)
    opt = MasterAdamW(master.parameters(), lr=1e-6, weight_decay=0.0)
    _train(master, opt, 50)
    _train(reference, torch.optim.AdamW(reference.parameters(), lr=1e-6, weight_decay=0.0), 50)
    moved = (reference.weight - start).abs().mean()  # what fp32 training moved, about 50 x 1e-6
    plain_err = (plain.weight.float() - reference.weight).abs().mean()
    master_err = (opt.masters[0] - reference.weight).abs().mean()
    assert plain_err > 0.9 * moved  # nearly every update rounded away
    assert master_err < 0.1 * moved  # the fp32 masters follow fp32 training
    assert (master.weight != plain.weight).any()  # and the model holds their rounding


def test_fp32_parameters_are_stepped_like_plain_adamw():
    a, b = _model(torch.float32), _model(torch.float32)
    _train(a, torch.optim.AdamW(a.parameters(), lr=1e-3), 5)
    _train(b, MasterAdamW(b.parameters(), lr=1e-3), 5)
    assert torch.equal(a.weight, b.weight)


def test_masters_round_trip_through_state_dict_and_follow_outside_changes():
    model = _model(torch.bfloat16)
    opt = MasterAdamW(model.parameters(), lr=1e-4)
    _train(model, opt, 3)
    sd = opt.state_dict()
    assert len(sd["master_weights"]) == 2 and sd["master_weights"][0].dtype == torch.float32
    fresh = _model(torch.bfloat16)
    fresh.load_state_dict(model.state_dict())
    opt2 = MasterAdamW(fresh.parameters(), lr=1e-4)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.masters[0], opt.masters[0])  # the fp32 bits that bf16 drops are back
    _train(model, opt, 2)
    _train(fresh, opt2, 2)
    assert torch.equal(model.weight, fresh.weight)
    with torch.no_grad():
        fresh.weight.fill_(0.5)  # changed outside the optimizer, as a warm start or a broadcast does
    _train(fresh, opt2, 1)
    assert (fresh.weight.float() - 0.5).abs().max() < 0.01

"""pfedla/optim.py, the one optimizer step of every update, against torch.optim itself."""

import pytest
import torch

from pfedla import optim


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2)])
def test_sgd_on_rows_equals_torch_optim_sgd_on_each_row_alone_bit_for_bit(momentum, weight_decay):
    gen = torch.Generator().manual_seed(0)
    stacked = torch.randn(4, 3, 5, generator=gen)
    velocity = torch.zeros_like(stacked)
    alone = [stacked[r].clone().requires_grad_(True) for r in (1, 3)]
    reference = [torch.optim.SGD([p], lr=0.1, momentum=momentum, weight_decay=weight_decay) for p in alone]
    untouched = stacked[[0, 2]].clone()
    for _ in range(3):
        grads = torch.randn(2, 3, 5, generator=gen)
        for p, g, opt in zip(alone, grads, reference):
            p.grad = g.clone()
            opt.step()
        optim.sgd(stacked, grads, lr=0.1, momentum=momentum, weight_decay=weight_decay, velocity=velocity,
                  rows=torch.tensor([1, 3]))
    assert torch.equal(stacked[1], alone[0].detach()) and torch.equal(stacked[3], alone[1].detach())
    assert torch.equal(stacked[[0, 2]], untouched)
    whole = stacked.clone().requires_grad_(True)
    mine = stacked.clone()
    g = torch.randn(4, 3, 5, generator=gen)
    whole.grad = g
    torch.optim.SGD([whole], lr=0.05).step()
    optim.sgd(mine, g, lr=0.05)
    assert torch.equal(mine, whole.detach())
    with pytest.raises(ValueError, match="velocity"):
        optim.sgd(mine, g, lr=0.05, momentum=0.9)


def test_adam_on_rows_at_different_step_numbers_equals_torch_optim_adam():
    gen = torch.Generator().manual_seed(1)
    stacked = torch.randn(3, 6, generator=gen)
    m, v = torch.zeros_like(stacked), torch.zeros_like(stacked)
    steps = torch.zeros(3, dtype=torch.int64)
    alone = [stacked[r].clone().requires_grad_(True) for r in range(3)]
    reference = [torch.optim.Adam([p], lr=0.01) for p in alone]
    for rows in ([0, 1], [1], [0, 1, 2]):  # rows reach different step numbers
        rows = torch.tensor(rows)
        grads = torch.randn(len(rows), 6, generator=gen)
        steps[rows] += 1
        optim.adam(stacked, grads, lr=0.01, exp_avg=m, exp_avg_sq=v, steps=steps[rows], rows=rows)
        for r, g in zip(rows.tolist(), grads):
            alone[r].grad = g.clone()
            reference[r].step()
    for r in range(3):
        assert torch.equal(stacked[r], alone[r].detach())

"""PBT's exploit in the training loop: another trial's optimizer state, this trial's lr and weight decay."""
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from train import FinetuneConfig
from train.finetune.loop import _adopt_hyperparams


def test_adopted_checkpoint_keeps_its_step_but_takes_the_new_lr_and_weight_decay():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "weight_decay": 0.01},
                                   {"params": [model.bias], "weight_decay": 0.0}], lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(4):  # the exploited trial's progress: 4 steps at lr 1e-3
        optimizer.step()
        scheduler.step()
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)

    _adopt_hyperparams(scheduler, FinetuneConfig(tenant="john", data="x.jsonl", lr=4e-4, weight_decay=0.05))
    assert scheduler.last_epoch == 4  # same place in the schedule
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([4e-4 * factor] * 2)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]  # biases never decay
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * scheduler.lr_lambdas[0](5))

"""Precision and device decisions for every (device, capability, torch version) combination, and the
learning-rate schedule across skipped steps and resumes. CI has no GPU: the decisions are pure
functions of the machine's facts, so each branch runs here."""

import pytest
import torch

from cellmorphnet.errors import ConfigError
from cellmorphnet.runtime.devices import (
    MachineFacts,
    decide_precision,
    default_channels_last,
    pick_device,
    resolve_channels_last,
)
from cellmorphnet.training import schedule
from cellmorphnet.training.engine import optimizer_step

A100 = MachineFacts("cuda", (8, 0), (2, 14))
H100 = MachineFacts("cuda", (9, 0), (2, 14))
V100 = MachineFacts("cuda", (7, 0), (2, 14))
T4 = MachineFacts("cuda", (7, 5), (2, 14))
MPS_NEW = MachineFacts("mps", None, (2, 8))
MPS_OLD = MachineFacts("mps", None, (2, 7))
CPU = MachineFacts("cpu", None, (2, 14))


@pytest.mark.parametrize(
    "facts, amp, name, scaler",
    [
        (A100, "auto", "bf16", False),
        (H100, "auto", "bf16", False),
        (A100, "bf16", "bf16", False),
        (A100, "fp16", "fp16", True),
        (V100, "auto", "fp16", True),  # no native bf16 before Ampere: fp16 with loss scaling
        (T4, "auto", "fp16", True),
        (T4, "fp16", "fp16", True),
        (T4, "off", "fp32", False),
        (MPS_NEW, "auto", "fp16", True),  # GradScaler works on MPS from torch 2.8
        (MPS_NEW, "fp16", "fp16", True),
        (MPS_OLD, "auto", "fp32", False),  # fp16 without loss scaling would underflow: stay in fp32
        (MPS_NEW, "off", "fp32", False),
        (CPU, "auto", "fp32", False),
        (CPU, "bf16", "bf16", False),
        (CPU, "off", "fp32", False),
    ],
)
def test_precision_decision(facts, amp, name, scaler):
    p = decide_precision(facts, amp)
    assert (p.name, p.scaler) == (name, scaler)


@pytest.mark.parametrize(
    "facts, amp, message",
    [
        (V100, "bf16", "native bf16"),  # an error, never a silent fallback to fp16
        (T4, "bf16", "7.5"),
        (MPS_OLD, "fp16", "loss scaling"),
        (MPS_NEW, "bf16", "not supported on Apple MPS"),
        (CPU, "fp16", "not supported on the CPU"),
    ],
)
def test_precision_refusals(facts, amp, message):
    with pytest.raises(ConfigError, match=message):
        decide_precision(facts, amp)


def test_channels_last_defaults_off_on_mps_only():
    assert default_channels_last("cpu") and default_channels_last("cuda") and not default_channels_last("mps")
    assert resolve_channels_last(None, torch.device("cpu")) is True
    assert resolve_channels_last(False, torch.device("cpu")) is False


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            pick_device("cuda")
    with pytest.raises(ConfigError, match="Unknown device"):
        pick_device("tpu")


def test_schedule_does_not_advance_on_a_step_the_scaler_skipped():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = model.weight.detach().clone()
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    model.weight.grad[0, 0] = float("inf")  # an fp16 overflow
    assert optimizer_step(opt, scaler, list(model.parameters()), grad_clip=0) is False
    assert torch.equal(model.weight, before) and scaler.get_scale() < 1024.0
    opt.zero_grad()
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    assert optimizer_step(opt, scaler, list(model.parameters()), grad_clip=1.0) is True
    assert not torch.equal(model.weight, before)


def test_lr_plan_extension_is_continuous_and_keeps_decaying():
    plan = schedule.LrPlan(total_steps=100, warmup_steps=10, min_ratio=0.01)
    at = 100  # the run finished its planned 100 steps, then --epochs doubles them
    longer = plan.extended(at, 200)
    assert longer.factor(at) == pytest.approx(plan.factor(at))  # no jump
    values = [longer.factor(s) for s in range(at, 201)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(0.01)
    # the plain cosine over the new total would have jumped back up to about half the peak
    assert schedule.warmup_cosine(200, 10, 0.01)(at) > 0.5 > longer.factor(at)
    mid = plan.extended(50, 150)
    assert mid.factor(50) == pytest.approx(plan.factor(50)) and mid.factor(49) == plan.factor(49)
    assert mid.factor(150) == pytest.approx(0.01)
    assert schedule.LrPlan.from_dict(longer.to_dict()) == longer
    assert plan.extended(at, 100) is plan

"""Device and numeric precision: which device trains, in which autocast dtype, with or without loss scaling.

The decision is a pure function of facts about the machine (``MachineFacts``), so every branch is
tested on any machine, including the CUDA and MPS ones that CI never has:

- CUDA: bf16 where the GPU computes it natively (compute capability 8.0, Ampere, or newer); else
  fp16 with a gradient scaler. ``--amp bf16`` on an older GPU is an error, never a silent fallback
  (``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated, hence the capability).
- MPS: fp16 autocast with a gradient scaler where the installed torch has one for MPS (2.8 and
  newer); fp32 otherwise, since fp16 without loss scaling can underflow small gradients to zero.
- CPU: fp32 unless ``--amp bf16`` is asked for.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from cellmorphnet.errors import ConfigError

MPS_SCALER_TORCH = (2, 8)  # torch.amp.GradScaler("mps") works from this release (pytorch/pytorch#150255)
BF16_CAPABILITY = (8, 0)  # native bf16 tensor cores: Ampere and newer


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # autocast dtype, or None for full precision
    scaler: bool  # whether a GradScaler scales the loss (fp16 only)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]


@dataclass(frozen=True)
class MachineFacts:
    """What the precision decision depends on, read from the machine by ``facts_for``."""

    device_type: str  # cuda, mps or cpu
    cuda_capability: tuple[int, int] | None = None  # (major, minor) of the CUDA device
    torch_version: tuple[int, int] = (0, 0)  # (major, minor) of the installed torch


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def facts_for(device: torch.device) -> MachineFacts:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return MachineFacts(device.type, capability, torch_version())


def decide_precision(facts: MachineFacts, amp: str) -> Precision:
    """The autocast dtype and loss scaling for ``--amp`` (auto, bf16, fp16 or off) on this machine."""
    if amp == "off":
        return Precision(None, False)
    if facts.device_type == "cuda":
        native_bf16 = facts.cuda_capability is not None and facts.cuda_capability >= BF16_CAPABILITY
        if amp == "bf16" and not native_bf16:
            cap = ".".join(map(str, facts.cuda_capability or ("?", "?")))
            raise ConfigError(
                f"--amp bf16 needs a GPU with native bf16 (compute capability 8.0 or newer); this one has {cap}.",
                hint="Use --amp fp16 (with loss scaling) or --amp auto.",
            )
        if amp == "bf16" or (amp == "auto" and native_bf16):
            return Precision(torch.bfloat16, False)
        return Precision(torch.float16, True)
    if facts.device_type == "mps":
        scaler_ok = facts.torch_version >= MPS_SCALER_TORCH
        if amp == "bf16":
            raise ConfigError("--amp bf16 is not supported on Apple MPS.", hint="Use --amp fp16, auto or off.")
        if amp == "fp16" and not scaler_ok:
            raise ConfigError(
                "--amp fp16 on Apple MPS needs loss scaling, which torch supports there from 2.8 on.",
                hint="pip install --upgrade torch, or use --amp off.",
            )
        return Precision(torch.float16, True) if scaler_ok else Precision(None, False)
    if amp == "fp16":
        raise ConfigError("fp16 autocast is not supported on the CPU.", hint="Use --amp bf16 or --amp off.")
    return Precision(torch.bfloat16, False) if amp == "bf16" else Precision(None, False)


def pick_precision(device: torch.device, amp: str) -> Precision:
    return decide_precision(facts_for(device), amp)


def default_channels_last(device_type: str) -> bool:
    """Channels-last speeds up convolutions on CPU and CUDA; on MPS batch norm has open correctness bugs with it."""
    return device_type != "mps"


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU for ``auto``; otherwise the device asked for, if present."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {preference} was asked for, but no CUDA device is available.",
                          hint="Use --device auto.")  # fmt: skip
    if preference == "mps" and not has_mps:
        raise ConfigError("--device mps was asked for, but Apple MPS is not available.", hint="Use --device auto.")
    if preference not in ("cpu", "mps") and not preference.startswith("cuda"):
        raise ConfigError(f"Unknown device '{preference}'.", hint="Use auto, cuda, cuda:N, mps or cpu.")
    return torch.device(preference)


def autocast(device: torch.device, precision: Precision):
    if precision.dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def make_scaler(device: torch.device, precision: Precision):
    return torch.amp.GradScaler(device.type) if precision.scaler else None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timing measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def resolve_channels_last(setting: bool | None, device: torch.device) -> bool:
    """``--channels-last/--no-channels-last`` if given, else the device's default."""
    return default_channels_last(device.type) if setting is None else bool(setting)

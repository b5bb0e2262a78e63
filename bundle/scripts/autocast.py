"""Mixed precision on the CPU: MONAI's engines only autocast on CUDA (``amp``), this does it for bfloat16 CPUs."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import SimpleInferer
from monai.utils import str2bool


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


class AutocastInferer(SimpleInferer):
    """:class:`~monai.inferers.SimpleInferer` run under ``torch.autocast(device_type, dtype)`` when ``enabled``
    (``None``: when :func:`cpu_has_bf16`; CPU autocast leaves work on a GPU alone, where the engines' ``amp`` acts).

    The network's output comes back as float32, so losses and metrics see the usual dtype; the weights and
    their gradients stay float32 (autocast only lowers the matrix products and convolutions).
    """

    def __init__(
        self, enabled: bool | str | None = None, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        try:  # a command line gives strings (``--cpu_bf16 false``): read them, do not truth-test them
            if enabled is None:
                self.enabled = cpu_has_bf16()
            else:
                self.enabled = str2bool(enabled) if isinstance(enabled, str) else bool(enabled)
        except ValueError as err:
            raise ValueError(f"AutocastInferer enabled (the bundle's cpu_bf16): {err}") from err
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out

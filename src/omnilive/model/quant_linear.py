"""Linear layers over GGUF-quantised weights, multiplied by our C++ kernel (kernels/quant_matmul.cpp).

The kernel is compiled once per machine with torch.utils.cpp_extension (gcc and ninja) into
a cache folder and reused. It runs AVX2 or AVX-512 VNNI, picked at run time; the AVX2 path is
forced by `ATEN_CPU_CAPABILITY=avx2` (as PyTorch's own kernels are) or `OMNILIVE_CPU_ISA=avx2`.
Without a compiler or an AVX2 CPU `kernels()` returns None and callers keep float weights.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from omnilive.model.quant_formats import BLOCK, BLOCK_BYTES, FORMAT_NAMES

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "quant_matmul.cpp"
DEFAULT_BUILD_ROOT = Path.home() / ".cache" / "omnilive" / "kernels"
ISAS = ("avx2", "avx512_vnni")


@functools.cache
def kernels(build_root: str | None = None):
    """The compiled kernel module, or None (logged once) where it cannot be built or run."""
    root = Path(build_root or os.environ.get("OMNILIVE_KERNEL_DIR") or DEFAULT_BUILD_ROOT)
    build_dir = root / f"quant_matmul-torch{torch.__version__}"
    try:
        from torch.utils.cpp_extension import load

        if shutil.which("ninja") is None:  # pip's ninja sits next to the venv's python
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        build_dir.mkdir(parents=True, exist_ok=True)
        if not any(build_dir.glob("*.so")):
            log.info("compiling the quantised CPU kernel into %s (once per machine, about a minute)", build_dir)
        module = load("omnilive_quant_matmul", [str(KERNEL_SOURCE)], extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                      build_directory=str(build_dir), verbose=False)
    except Exception as error:  # no compiler, no ninja, a failed build: float weights instead
        log.warning("quantised CPU kernel unavailable (%s): the LLM keeps float weights", str(error).splitlines()[0])
        return None
    if not module.cpu_runs("avx2"):
        log.warning("quantised CPU kernel needs AVX2 and FMA: the LLM keeps float weights")
        return None
    return module


def kernel_isa() -> str | None:
    """The instruction set the kernel runs: OMNILIVE_CPU_ISA, else avx2 where PyTorch was told
    to stay at AVX2 (ATEN_CPU_CAPABILITY), else the best this CPU has; None without a kernel."""
    module = kernels()
    if module is None:
        return None
    wanted = os.environ.get("OMNILIVE_CPU_ISA", "").lower()
    if wanted:
        if wanted not in ISAS or not module.cpu_runs(wanted):
            raise ValueError(f"OMNILIVE_CPU_ISA={wanted!r}: this CPU runs {[i for i in ISAS if module.cpu_runs(i)]}")
        return wanted
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT"):
        return "avx2"
    return "avx512_vnni" if module.cpu_runs("avx512_vnni") else "avx2"


def quant_matmul(x: torch.Tensor, weights: list[torch.Tensor], formats: list[int],
                 biases: list[torch.Tensor | None], isa: str | None = None) -> torch.Tensor:
    """x [..., in] → [..., sum of out_features]: the weights' outputs side by side, in float32."""
    rows = x.reshape(-1, x.shape[-1]).float()
    y = kernels().quant_linear(rows, weights, formats, biases, isa or kernel_isa())
    return y.view(*x.shape[:-1], y.shape[-1])


class QuantLinear(nn.Module):
    """nn.Linear with its weight as quantised blocks (`weight_blocks`, uint8 [out, in / 32 * block
    bytes], format `weight_format`); float32 out."""

    def __init__(self, in_features: int, out_features: int, format_id: int, bias: bool = False):
        super().__init__()
        if in_features % BLOCK:
            raise ValueError(f"quantised linear: in_features {in_features} is not a multiple of {BLOCK}")
        self.in_features, self.out_features, self.format_id = in_features, out_features, format_id
        row_bytes = in_features // BLOCK * BLOCK_BYTES[format_id]
        self.register_buffer("weight_blocks", torch.empty(out_features, row_bytes, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.isa = kernel_isa()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_matmul(x, [self.weight_blocks], [self.format_id], [self.bias], self.isa)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={FORMAT_NAMES[self.format_id]}, bias={self.bias is not None}")


class FusedQuantLinear:
    """Several QuantLinears on the same input in one kernel call (one activation quantisation,
    one thread fork); returns their outputs as views. A plain attribute of the module that
    calls it (Attention.fused_qkv, SwiGLU.fused_gate_up): the weights stay where the
    checkpoint names them."""

    def __init__(self, *linears: QuantLinear):
        self.weights = [linear.weight_blocks for linear in linears]
        self.formats = [linear.format_id for linear in linears]
        self.biases = [linear.bias for linear in linears]
        self.sizes = [linear.out_features for linear in linears]
        self.isa = linears[0].isa

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return quant_matmul(x, self.weights, self.formats, self.biases, self.isa).split(self.sizes, dim=-1)


def fuse_projections(model: nn.Module) -> int:
    """Give every attention whose q/k/v_proj, and every MLP whose gate/up_proj, are QuantLinears
    a fused call for them; returns how many fused calls were made."""
    count = 0
    for module in model.modules():
        for attribute, names in (("fused_qkv", ("q_proj", "k_proj", "v_proj")), ("fused_gate_up", ("gate_proj", "up_proj"))):
            linears = [getattr(module, name, None) for name in names]
            if hasattr(module, attribute) and all(isinstance(linear, QuantLinear) for linear in linears):
                setattr(module, attribute, FusedQuantLinear(*linears))
                count += 1
    return count


def use_quant_linears(model: nn.Module, formats: dict[str, int], state: dict[str, torch.Tensor]) -> int:
    """Replace each linear named in `formats` ("model.layers.0.self_attn.q_proj" → format id) by a
    QuantLinear shaped for its `<name>.weight_blocks` in `state`; returns how many."""
    for name, format_id in formats.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        setattr(parent, child, QuantLinear(linear.in_features, linear.out_features, format_id,
                                           bias=f"{name}.bias" in state))
    return len(formats)

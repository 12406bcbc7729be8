"""Linear layers over GGUF-quantised weights, multiplied by our C++ kernel (kernels/quant_matmul.cpp).

The kernel is compiled once per machine with torch.utils.cpp_extension (gcc and ninja) into
a cache folder and reused. It runs AVX2 or AVX-512 VNNI, picked at run time; the AVX2 path is
forced by `ATEN_CPU_CAPABILITY=avx2` (as PyTorch's own kernels are) or `OMNILIVE_CPU_ISA=avx2`.
Without a compiler or an AVX2 CPU `kernels()` returns None and callers keep float weights.

Prompts may run on a float copy of the same values (`add_float_copies`): one oneDNN GEMM reuses
each weight across a prompt's rows far better than the kernel's integer loops (decode stays on
the kernel, which reads 4-8x fewer bytes). The choice is per token, never per step: a prompt
token takes the copy and every other token the kernel, whatever shares its step, so a reply
does not depend on its batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.layers import Attention, RMSNorm
from omnilive.model.packed import can_pack, pack_weight, packed_linear
from omnilive.model.quant_formats import BLOCK, BLOCK_BYTES, FORMAT_NAMES, dequantize

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "quant_matmul.cpp"
DEFAULT_BUILD_ROOT = Path.home() / ".cache" / "omnilive" / "kernels"
ISAS = ("avx2", "avx512_vnni")


@functools.cache
def kernels(build_root: str | None = None):
    """The compiled kernel module, or None (logged once) where it cannot be built or run."""
    root = Path(build_root or os.environ.get("OMNILIVE_KERNEL_DIR") or DEFAULT_BUILD_ROOT)
    # a new build for every change of the sources (torch's own check does not read the header)
    sources = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(KERNEL_SOURCE.parent.iterdir())
                                      if path.suffix in (".cpp", ".h"))).hexdigest()[:12]
    build_dir = root / f"quant_matmul-torch{torch.__version__}-{sources}"
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


@dataclass(frozen=True)
class FloatCopy:
    """A layer's weights dequantised into a float dtype (packed for oneDNN where it can be),
    with its bias: what prompt tokens are multiplied by."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    dtype: torch.dtype
    packed: bool

    @classmethod
    def of(cls, linears: tuple[QuantLinear, ...], weight: torch.Tensor) -> FloatCopy:
        """The copy of `linears` (outputs side by side) from their dequantised `weight` [out, in]."""
        biases = [linear.bias for linear in linears]
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases]).to(weight.dtype)
        packed = can_pack(weight.dtype, "cpu")
        return cls(pack_weight(weight) if packed else weight, bias, weight.dtype, packed)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(self.dtype)
        y = packed_linear(rows, self.weight, self.bias) if self.packed else F.linear(rows, self.weight, self.bias)
        return y.float()


@dataclass(frozen=True)
class RowSplit:
    """Which rows of the running forward's [M, in] inputs are prompt tokens."""

    prompt: torch.Tensor  # row indices
    other: torch.Tensor


# set by `prompt_rows` around a model's forward; None: every row takes the kernel
_PROMPT_ROWS: contextvars.ContextVar[RowSplit | str | None] = contextvars.ContextVar("prompt_rows", default=None)


@contextlib.contextmanager
def prompt_rows(is_prompt: torch.Tensor | None):
    """Inside the block, layers with a float copy compute the rows where `is_prompt` ([M] bool,
    one per token row of their input) is true on it, the others on the kernel."""
    if is_prompt is None or not bool(is_prompt.any()):
        split = None
    elif bool(is_prompt.all()):
        split = "all"
    else:
        split = RowSplit(is_prompt.nonzero().view(-1), (~is_prompt).nonzero().view(-1))
    token = _PROMPT_ROWS.set(split)
    try:
        yield
    finally:
        _PROMPT_ROWS.reset(token)


def _by_rows(x: torch.Tensor, float_copy: FloatCopy | None, on_kernel) -> torch.Tensor:
    """x [..., in] → [..., out] float32: prompt rows on `float_copy`, the rest by `on_kernel`."""
    split = _PROMPT_ROWS.get() if float_copy is not None else None
    if split is None:
        return on_kernel(x)
    rows = x.reshape(-1, x.shape[-1])
    if split == "all":
        y = float_copy(rows)
    else:
        prompt, other = float_copy(rows.index_select(0, split.prompt)), on_kernel(rows.index_select(0, split.other))
        y = prompt.new_empty(rows.shape[0], prompt.shape[1])
        y.index_copy_(0, split.prompt, prompt).index_copy_(0, split.other, other)
    return y.view(*x.shape[:-1], y.shape[-1])


class QuantLinear(nn.Module):
    """nn.Linear with its weight as quantised blocks (`weight_blocks`, uint8 [out, in / 32 * block
    bytes], format `weight_format`); float32 out. `float_copy` (not a checkpoint key) serves
    prompt rows where `add_float_copies` made one."""

    float_copy: FloatCopy | None = None

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
        return _by_rows(x, self.float_copy, self._on_kernel)

    def _on_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return quant_matmul(x, [self.weight_blocks], [self.format_id], [self.bias], self.isa)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={FORMAT_NAMES[self.format_id]}, bias={self.bias is not None}")


class FusedQuantLinear:
    """Several QuantLinears on the same input in one kernel call (one activation quantisation,
    one thread fork); returns their outputs as views. A plain attribute of the module that
    calls it (Attention.fused_qkv, SwiGLU.fused_gate_up): the weights stay where the
    checkpoint names them."""

    float_copy: FloatCopy | None = None

    def __init__(self, *linears: QuantLinear):
        self.linears = linears
        self.weights = [linear.weight_blocks for linear in linears]
        self.formats = [linear.format_id for linear in linears]
        self.biases = [linear.bias for linear in linears]
        self.sizes = [linear.out_features for linear in linears]
        self.isa = linears[0].isa

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _by_rows(x, self.float_copy, self._on_kernel).split(self.sizes, dim=-1)

    def _on_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return quant_matmul(x, self.weights, self.formats, self.biases, self.isa)


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


def prompt_calls(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, QuantLinear | FusedQuantLinear]:
    """The decoder's quantised calls by name ("model.layers.0.self_attn.fused_qkv", "….o_proj"):
    fused q/k/v and gate/up as one, the modules named in `skip` left out (the head sees one
    row per due reply, never a prompt)."""
    calls: dict[str, QuantLinear | FusedQuantLinear] = {}
    in_fused: set[int] = set()
    for name, module in model.named_modules():
        for attribute in ("fused_qkv", "fused_gate_up"):
            call = getattr(module, attribute, None)
            if isinstance(call, FusedQuantLinear):
                calls[f"{name}.{attribute}"] = call
                in_fused.update(id(linear) for linear in call.linears)
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear) and id(module) not in in_fused and name not in skip:
            calls[name] = module
    return calls


def dequantized_weight(call: QuantLinear | FusedQuantLinear, dtype: torch.dtype) -> torch.Tensor:
    """A call's weights as [sum of out_features, in] in `dtype`: the values the kernel multiplies by."""
    linears = call.linears if isinstance(call, FusedQuantLinear) else (call,)
    return torch.cat([torch.from_numpy(dequantize(linear.weight_blocks.numpy(), linear.format_id))
                      for linear in linears]).to(dtype)


def add_float_copies(model: nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Give each call of `prompt_calls(model)` its float copy from `weights` (name → dequantised
    weight); prompt rows run on it from then on. Returns the bytes the copies take."""
    calls = prompt_calls(model)
    if set(weights) != set(calls):
        raise ValueError(f"float copies do not match the model's quantised calls: {sorted(set(weights) ^ set(calls))[:4]}")
    for name, call in calls.items():
        call.float_copy = FloatCopy.of(call.linears if isinstance(call, FusedQuantLinear) else (call,), weights[name])
    return sum(weight.numel() * weight.element_size() for weight in weights.values())


def use_compiled_glue(model: nn.Module) -> int:
    """Let the model's RMSNorms and attentions run their float32 glue (norm, rotary) as the
    kernel module's compiled calls; returns how many modules were given one."""
    module, count = kernels(), 0
    for layer in model.modules():
        if isinstance(layer, RMSNorm):
            layer.compiled = module.rms_norm
        elif isinstance(layer, Attention):
            layer.compiled_rotary = module.rotary_
        else:
            continue
        count += 1
    return count

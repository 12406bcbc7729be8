"""Linear layers whose weights are pre-packed for oneDNN's CPU matmul (bf16 and float32 inference).

A decode step is a matrix-vector product per weight, bound by how fast the weights stream
from memory. `F.linear` on a plain [out, in] bf16 weight reaches about 0.8 of the machine's
copy bandwidth; the same weight reordered once into oneDNN's blocked layout streams about
1.25x faster for 1-64 rows, and prefill-sized batches gain too (Xeon with AMX, 2 threads:
docs/benchmarks.md). Up to 16 rows the result is bitwise that of `F.linear`; larger batches
sum in another order (bf16 rounding). float32 gains more: torch's float32 `F.linear` (MKL)
costs 2-3.5x more for 2-16 rows than for one, oneDNN's packed float32 about the same for 1-16
rows, and it is 1.3-1.6x faster at 144-288 rows (the DiT's windows) (EPYC, 2 threads); its
sums run in another order (float32 rounding, ~1e-6 relative).

The packed weight replaces the plain one (no extra memory), so a packed model cannot be
saved or cast any more: pack after loading, as the last step.
"""

from __future__ import annotations

import torch
from torch import nn

# oneDNN picks its blocking for this batch size; any batch runs, and 64 serves 1-row decode
# as well as 8-row batches and prefill chunks (measured)
PACKING_BATCH_HINT = 64


def can_pack(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether this machine runs packed linears of this dtype natively: float32 on any CPU
    oneDNN serves, bf16 on CPUs with AVX512-BF16 / AMX."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] bf16 weight → the same values in oneDNN's layout (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACKING_BATCH_HINT)


def packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] → [..., out] with a weight from `pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # not part of any checkpoint: the loaded weight was consumed before packing
        self.register_buffer("packed_weight", pack_weight(linear.weight), persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.packed_weight.dtype:  # e.g. bf16 activations under autocast: compute in ours
            x = x.to(self.packed_weight.dtype)
        return packed_linear(x, self.packed_weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(module: nn.Module) -> int:
    """Replace every nn.Linear inside `module` whose weight this machine packs (`can_pack`) by
    a PackedLinear, in place, and let a module with its own `pack` method pack its weights;
    returns how many were packed."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and can_pack(child.weight.dtype, child.weight.device):
            setattr(module, name, PackedLinear(child))
            count += 1
        elif callable(getattr(child, "pack", None)):  # weights held otherwise (moe.FusedExperts)
            count += child.pack()
        else:
            count += pack_linears(child)
    return count


def pack_decoder(model: nn.Module) -> int:
    """Pack what a decode step reads in a Qwen2-style decoder (`model.layers`, and its output
    head(s) `lm_head` / `codec_head`) when the machine supports it; media towers and small
    projections stay as they are. Returns how many linears were packed (0: not supported)."""
    if not can_pack(model.dtype, model.device):
        return 0
    count = pack_linears(model.model.layers)
    for head in ("lm_head", "codec_head"):
        linear = getattr(model, head, None)
        if isinstance(linear, nn.ModuleList):  # a head per codebook (the Qwen3-Omni code predictor)
            count += pack_linears(linear)
        elif isinstance(linear, nn.Linear) and can_pack(linear.weight.dtype, linear.weight.device):
            # a tied head shares the embedding table: its packed copy costs that memory again
            setattr(model, head, PackedLinear(linear))
            count += 1
    return count


class FusedPackedLinear:
    """Linears that read the same input as one packed weight (their rows stacked): one oneDNN
    call, their outputs returned as views. A plain attribute of the module that calls it
    (Attention.fused_qkv, SwiGLU.fused_gate_up), as quant_linear.FusedQuantLinear is."""

    def __init__(self, *linears: nn.Linear):
        stacked = torch.cat([linear.weight for linear in linears])
        self.nbytes = stacked.nbytes  # of the weight (the packed tensor is opaque)
        self.weight = pack_weight(stacked)
        biases = [linear.bias for linear in linears]
        self.bias = None if all(b is None for b in biases) else torch.cat([
            b.detach() if b is not None else linear.weight.new_zeros(linear.out_features)
            for b, linear in zip(biases, linears)])
        self.sizes = [linear.out_features for linear in linears]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        return packed_linear(x, self.weight, self.bias).split(self.sizes, dim=-1)


FUSED_PROJECTIONS = (("fused_qkv", ("q_proj", "k_proj", "v_proj")), ("fused_gate_up", ("gate_proj", "up_proj")))


def fuse_packed_projections(module: nn.Module) -> int:
    """Give every attention (q/k/v_proj) and SwiGLU (gate/up_proj) inside `module` whose
    projections are plain linears this machine packs one FusedPackedLinear for them, and drop
    the separate linears (their weights live on in the fused one; a packed model is never
    saved). For decoders whose steps are a few rows, where each call's fixed cost counts (the
    Qwen3-Omni code predictor: 15 steps a frame). Returns how many fused calls were made."""
    count = 0
    for child in list(module.modules()):
        for attribute, names in FUSED_PROJECTIONS:
            linears = [getattr(child, name, None) for name in names]
            if (hasattr(child, attribute) and all(isinstance(linear, nn.Linear) for linear in linears)
                    and can_pack(linears[0].weight.dtype, linears[0].weight.device)):
                setattr(child, attribute, FusedPackedLinear(*linears))
                for name in names:
                    delattr(child, name)
                count += 1
    return count

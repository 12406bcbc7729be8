"""Building blocks of a decoder-only transformer: RMSNorm, rotary embedding, GQA attention
over an external KV cache, and the SwiGLU MLP.

Shapes: B = rows (requests), T = tokens per row this step, H = hidden size,
nh / nkv = query / key-value heads, D = head dim, L = key length read from the cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.packed import can_pack, pack_weight, packed_linear


class RMSNorm(nn.Module):
    # the same in one compiled call (quant_linear.use_compiled_glue), for float32 CPU rows
    compiled: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None and x.dtype == torch.float32:
            return self.compiled(x, self.weight, self.eps)
        # Normalise in float32 (as the reference does), then scale in the model's dtype.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """Standard (NEOX-style, half-rotation) rotary position embedding, optionally multimodal.

    `forward` turns positions into (cos, sin) once per model step; every layer then calls
    `apply_rotary`. With `mrope_section` (Qwen2-VL / Qwen2.5-Omni M-RoPE) positions may be
    [3, B, T] (temporal, height, width): the D/2 frequencies are cut into three consecutive
    sections and section i takes its angles from axis i. Plain [B, T] positions mean all three
    axes are equal, which is ordinary RoPE. `interleaved` (Qwen3-VL): the axes alternate
    frequency by frequency instead of taking consecutive sections.
    """

    def __init__(self, head_dim: int, theta: float, mrope_section: tuple[int, ...] | None = None,
                 interleaved: bool = False):
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        # A plain CPU attribute, not a buffer: it must stay float32 when the model is cast to
        # bf16, hold real values when the model is built on the meta device, and it is not
        # part of any checkpoint.
        self.inv_freq = 1.0 / (theta ** exponents)  # [D/2]
        if mrope_section is not None and sum(mrope_section) != head_dim // 2:
            raise ValueError(f"mrope_section {mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
        self.mrope_section = tuple(mrope_section) if mrope_section is not None else None
        # interleaved M-RoPE (Qwen3-VL): frequency i takes axis i % 3 (t, h, w, t, h, w, ...) while
        # that axis has frequencies left in its section, the temporal axis all the rest
        self.mrope_axis = None
        if interleaved and mrope_section is not None:
            axis = torch.zeros(head_dim // 2, dtype=torch.long, device="cpu")
            for a in (1, 2):
                axis[a : 3 * mrope_section[a] : 3] = a
            self.mrope_axis = axis

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B, T] (or [3, B, T] with M-RoPE) → angles [B, T, D]
        (the D/2 frequencies, repeated for both halves)."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2] or [3, B, T, D/2]
        if positions.ndim == 3:
            if self.mrope_section is None:
                raise ValueError("[3, B, T] positions need a model configured with mrope_section")
            if self.mrope_axis is not None:
                axis = self.mrope_axis.to(positions.device)
                freqs = freqs.gather(0, axis.expand(freqs.shape[1:]).unsqueeze(0)).squeeze(0)
            else:
                sections = freqs.split(self.mrope_section, dim=-1)
                freqs = torch.cat([section[axis % 3] for axis, section in enumerate(sections)], dim=-1)
        return torch.cat((freqs, freqs), dim=-1)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = self.angles(positions)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D] (one row per token); cos/sin [N, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads that reads and writes a KV cache.

    Takes a step's tokens either as a full batch x [B, T, H] or, when the batch has right
    padding, as only its valid tokens x [N, H] (row-major; see `StepWrite`), so projections
    never run on padding. New keys/values are stored at their (row, position) first; then the
    queries of each group of rows with as many tokens (`write.groups`: e.g. all decoding rows,
    then each prefill chunk) read the keys 0..L-1 of their rows, each only those at positions
    <= its own. `write` knows the cache layout: a slot cache's layer tensors are
    [slots, nkv, max_len, D] (CacheWrite), a paged cache's [num_blocks, nkv, block_size, D]
    (PagedCacheWrite).
    """

    # q_proj, k_proj and v_proj in one call (x → (q, k, v)), where their weights allow it
    fused_qkv: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
    # apply_rotary on q and k in place, in one compiled call (quant_linear.use_compiled_glue)
    compiled_rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool,
        output_bias: bool = False,
        qk_norm_eps: float | None = None,  # Qwen3: RMSNorm of each query and key head before rotary
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=output_bias)
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps)
        self.qk_norm = qk_norm_eps is not None

    def forward(
        self,
        x: torch.Tensor,  # [B, T, H], or [N, H]: the valid tokens of a padded batch
        cos: torch.Tensor,  # [B * T or N, D]: one row per token of x
        sin: torch.Tensor,
        k_cache: torch.Tensor,  # one layer of the cache (layout: see `write`)
        v_cache: torch.Tensor,
        write: CacheWrite | PagedCacheWrite,
    ) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # [M, H], M = B * T or N
        if self.fused_qkv is not None:
            q, k, v = self.fused_qkv(tokens)
        else:
            q, k, v = self.q_proj(tokens), self.k_proj(tokens), self.v_proj(tokens)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.compiled_rotary is not None and q.dtype == torch.float32:
            self.compiled_rotary(q, k, cos, sin)
        else:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        write.store(k_cache, k)
        write.store(v_cache, v)
        out = None
        for group in write.groups:
            keys, values = write.read(k_cache, group), write.read(v_cache, group)  # [n, nkv, L, D]
            n, t = group.shape
            q_group = q if group.token_index is None else q.index_select(0, group.token_index)
            if t == 1:
                o = one_query_attention(q_group.view(n, self.num_heads, self.head_dim), keys, values, group.mask)
            else:
                q_group = q_group.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
                o = F.scaled_dot_product_attention(
                    q_group, keys, values, attn_mask=group.mask, enable_gqa=self.num_heads != self.num_kv_heads
                ).transpose(1, 2)  # [n, t, nh, D]
            o = o.reshape(n * t, self.num_heads * self.head_dim)
            if group.token_index is None:
                out = o
            else:
                if out is None:
                    out = o.new_empty(tokens.shape[0], o.shape[1])
                out.index_copy_(0, group.token_index, o)
        return self.o_proj(out).view(*x.shape[:-1], -1)


def one_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Attention of decoding rows, one query each: q [n, nh, D], keys/values [n, nkv, L, D],
    mask [n, 1, 1, L] → [n, nh, D].

    Two float32 matmuls with the query heads of each key/value head stacked: on CPUs, torch's
    fused attention handles a single query poorly (8 rows of 400 keys: 2.7 ms against 0.3 ms
    per layer, and ~9x at 2000 keys), and float32 keeps its accuracy (bf16 scores would not).
    """
    n, nh, D = q.shape
    nkv, L = keys.shape[1], keys.shape[2]
    grouped = q.float().view(n, nkv, nh // nkv, D)  # query heads sharing a key/value head
    scores = torch.matmul(grouped, keys.float().transpose(-1, -2)) * D**-0.5  # [n, nkv, nh/nkv, L]
    scores = scores.masked_fill(~mask.view(n, 1, 1, L), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), values.float())  # [n, nkv, nh/nkv, D]
    return out.view(n, nh, D).to(q.dtype)


class AttentionGroup:
    """Batch rows of one step that have the same number of valid tokens: one attention call.

    rows [n]: their batch rows; token_index [n * t]: where their tokens sit among the step's
    tokens as the layers see them (None: all of them, in order); mask [n, 1, t, L] bool: a
    query at position p sees keys at positions 0..p of its row. read_index: set by a paged
    cache's writer (where its keys are).
    """

    def __init__(self, rows: torch.Tensor, positions: torch.Tensor, token_index: torch.Tensor | None):
        self.rows, self.token_index = rows, token_index
        self.read_index: torch.Tensor | None = None
        self.shape = tuple(positions.shape)  # (n, t)
        self.key_len = int(positions.max()) + 1
        keys = torch.arange(self.key_len, device=positions.device)
        self.mask = (keys <= positions[..., None]).unsqueeze(1)


class StepWrite:
    """How one model step's tokens are laid out, worked out once for all layers.

    positions [B, T] with -1 for right padding. Without padding the layers take x [B, T, H];
    with it, only the N valid tokens ([N, H], row-major: `pack_index` are their flat indices in
    [B * T]), and the rows are grouped by their number of tokens, so neither projections nor
    attention compute padding.
    """

    def __init__(self, positions: torch.Tensor):
        self.batch_shape = B, T = tuple(positions.shape)
        device = positions.device
        valid = positions >= 0
        lengths = valid.sum(1)  # [B]
        all_rows = torch.arange(B, device=device)
        if bool(valid.all()):
            self.pack_index = None
            self.token_rows, self.token_positions = all_rows.repeat_interleave(T), positions.reshape(-1)
            self.groups = [AttentionGroup(all_rows, positions, None)]
            return
        if not torch.equal(valid, torch.arange(T, device=device) < lengths[:, None]):
            raise ValueError("padding (position -1) must come after a row's tokens")
        self.pack_index = valid.reshape(-1).nonzero().squeeze(1)
        self.token_rows = all_rows.repeat_interleave(lengths)
        self.token_positions = positions.reshape(-1)[self.pack_index]
        starts = torch.cumsum(lengths, 0) - lengths  # [B]: each row's first token among the N
        self.groups = []
        for t in sorted({int(n) for n in lengths if n > 0}):
            rows = (lengths == t).nonzero().squeeze(1)
            token_index = (starts[rows][:, None] + torch.arange(t, device=device)).reshape(-1)
            self.groups.append(AttentionGroup(rows, positions[rows, :t], token_index))


class CacheWrite(StepWrite):
    """StepWrite for a slot cache: layer tensors [slots, nkv, max_len, D]; slots [B] are the
    cache slots of the batch rows."""

    def __init__(self, slots: torch.Tensor, positions: torch.Tensor):
        super().__init__(positions)
        self.slots = slots
        self.token_slots = slots[self.token_rows]

    def store(self, cache: torch.Tensor, tokens: torch.Tensor) -> None:
        """tokens [N, nkv, D] (the valid tokens, row-major) → cache[slot, :, position]."""
        cache[self.token_slots, :, self.token_positions] = tokens.to(cache.dtype)

    def read(self, cache: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
        """The keys (or values) 0..L-1 of the group's rows: [n, nkv, L, D]."""
        if group.shape[0] == 1:  # one row reads its slot as a view; several gather (a small copy)
            return cache[int(self.slots[group.rows[0]]), :, : group.key_len].unsqueeze(0)
        return cache[self.slots[group.rows], :, : group.key_len]


class PagedCacheWrite(StepWrite):
    """StepWrite for a paged cache: layer tensors [num_blocks, nkv, block_size, D]; a row's
    position p lives in block block_tables[row, p // block_size] at offset p % block_size.

    Reads and writes go through flat indices into a layer viewed as
    [num_blocks * nkv * block_size, D]: entry (block * nkv + h) * block_size + offset holds head
    h of a position, so a group's read is one index_select straight into the [n, nkv, L, D]
    that attention takes.
    """

    def __init__(
        self,
        block_tables: torch.Tensor,  # [rows, max_blocks] long: block ids of each row
        block_size: int,
        num_kv_heads: int,
        rows: torch.Tensor,  # [B] long: the block-table row of each batch row
        positions: torch.Tensor,  # [B, T] long, -1 = right padding
    ):
        super().__init__(positions)
        self.num_kv_heads = num_kv_heads
        tables = block_tables[rows]  # [B, max_blocks]
        heads = torch.arange(num_kv_heads, device=positions.device) * block_size  # [nkv]

        def entries(table_rows: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
            starts = tables[table_rows, token_positions // block_size] * (num_kv_heads * block_size)
            return (starts + token_positions % block_size)[..., None] + heads  # [..., nkv]

        self.write_index = entries(self.token_rows, self.token_positions).reshape(-1)  # [N * nkv]
        for group in self.groups:
            keys = torch.arange(group.key_len, device=positions.device)
            index = entries(group.rows[:, None], keys[None, :])  # [n, L, nkv]
            group.read_index = index.transpose(1, 2).reshape(-1)  # [n * nkv * L]

    def store(self, cache: torch.Tensor, tokens: torch.Tensor) -> None:
        """tokens [N, nkv, D] (the valid tokens, row-major) → their (row, position) entries."""
        flat = tokens.reshape(-1, tokens.shape[-1]).to(cache.dtype)  # [N * nkv, D]
        cache.view(-1, cache.shape[-1]).index_copy_(0, self.write_index, flat)

    def read(self, cache: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
        """The keys (or values) 0..L-1 of the group's rows: [n, nkv, L, D]."""
        flat = cache.view(-1, cache.shape[-1])
        return flat.index_select(0, group.read_index).view(group.shape[0], self.num_kv_heads, group.key_len, -1)


class SwiGLU(nn.Module):
    # gate_proj and up_proj in one call (x → (gate, up)), where their weights allow it
    fused_gate_up: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gate_up is not None:
            gate, up = self.fused_gate_up(x)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Int8Linear(nn.Module):
    """Weight-only int8 linear (one scale per output row) for memory-bound CPU decode.

    A decode step reads every weight once, so halving the bytes of a bf16 model nearly halves
    its time. But torch's int8 kernel costs in proportion to its rows (it does not reuse a
    weight across rows): 1-4 rows run about twice as fast as a bf16 matmul, 8 rows 1.6x slower
    (Xeon with AMX, measured). Batches above `max_rows_for_int8_kernel` (batched decode,
    prefill) therefore run a bf16 matmul on the same int8 values held in bf16 - exact, as
    |q| <= 127 fits bf16's mantissa - so a reply does not depend on how many requests share
    its batch beyond rounding. That copy costs the bf16 weights' memory once more; where
    oneDNN runs bf16 natively it is kept packed (model/packed.py). Packed bf16 already beats
    the int8 kernel at 3-4 rows, but up to 4 rows (the default max_batch) every decode step
    runs the same kernel, so a reply is the same alone or batched, bf16 ties apart.
    """

    max_rows_for_int8_kernel = 4

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        as_float = self.weight_int8.to(linear.weight.dtype)
        self.packed = can_pack(as_float.dtype, as_float.device)  # oneDNN's layout streams faster
        self.register_buffer("weight_int8_as_float", pack_weight(as_float) if self.packed else as_float,
                             persistent=False)
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # torch's int8 kernel crashes (SIGSEGV) when in_features is not a multiple of 16
        self.int8_kernel = linear.in_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.max_rows_for_int8_kernel and self.int8_kernel:
            y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        elif self.packed:
            y = packed_linear(rows.to(torch.bfloat16), self.weight_int8_as_float) * self.scale
        else:
            y = F.linear(rows, self.weight_int8_as_float.to(x.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def quantize_linears_int8(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear inside `module` by an Int8Linear, in place (bf16/fp16 models:
    torch's int8 kernel is slower than a float32 matmul)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            if child.weight.dtype == torch.float32:
                raise ValueError("int8 weights need a bf16 or fp16 model: with float32 they run slower")
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linears_int8(child)
    return module

"""GGUF quantised tensors → the block layouts our CPU kernel reads (kernels/quant_matmul.cpp).

Each layout holds the GGUF's own values exactly, so no new rounding is added:
  - Q8_0 and Q5_0 blocks are kept byte for byte (32 values: fp16 d with int8 q, or with 5-bit q - 16);
  - Q4_K: each 32-value sub-block is `scale * q - min` (q in 0..15, scale = d * sc, min = dmin * m),
    stored as "Q4F": f32 scale, f32 min, 16 bytes of nibbles (value j low nibble, j + 16 high);
  - Q6_K: each 16-value sub-block is int8 q in [-32, 31] times a scale, stored as "Q8S2":
    per 32 values two f32 scales and 32 int8.
Rows are [out_features, in_features / 32 * block bytes] uint8. `dequantize` turns them back into
float32 with the same arithmetic as gguf.quants, for tests and the float path of long prompts.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as GGML
from gguf.quants import Q4_K

BLOCK = 32

# format id (the kernel's) → bytes per 32 values
Q8_0, Q5_0, Q4F, Q8S2 = 0, 1, 2, 3
BLOCK_BYTES = {Q8_0: 34, Q5_0: 22, Q4F: 24, Q8S2: 40}
FORMAT_NAMES = {Q8_0: "q8_0", Q5_0: "q5_0", Q4F: "q4f", Q8S2: "q8s2"}

# GGUF types the kernel reads, and the format each becomes
CONVERTIBLE = {GGML.Q8_0: Q8_0, GGML.Q5_0: Q5_0, GGML.Q4_K: Q4F, GGML.Q6_K: Q8S2}


def convertible(qtype: GGML, in_features: int) -> bool:
    return qtype in CONVERTIBLE and in_features % BLOCK == 0


def from_gguf(data: np.ndarray, qtype: GGML, out_features: int) -> tuple[np.ndarray, int]:
    """A GGUF tensor's raw blocks (uint8, as GGUFReader gives them) → (our rows, format id)."""
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(out_features, -1)
    if qtype in (GGML.Q8_0, GGML.Q5_0):
        return raw, CONVERTIBLE[qtype]
    if qtype == GGML.Q4_K:
        return _q4k_to_q4f(raw.reshape(-1, 144)).reshape(out_features, -1), Q4F
    if qtype == GGML.Q6_K:
        return _q6k_to_q8s2(raw.reshape(-1, 210)).reshape(out_features, -1), Q8S2
    raise ValueError(f"no block format for GGUF type {qtype.name}")


def _q4k_to_q4f(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = Q4_K.get_scale_min(blocks[:, 4:16].copy())
    scale = (d * sc.astype(np.float32)).reshape(n * 8, 1)  # the same float32 products as gguf's dequantize
    minimum = (dmin * m.astype(np.float32)).reshape(n * 8, 1)
    qs = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & np.uint8(0x0F)).reshape(n * 8, 32)  # 8 sub-blocks of 32 values
    return np.concatenate([scale.view(np.uint8), minimum.view(np.uint8), _nibbles(q)], axis=1)


def _q6k_to_q8s2(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    scales = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
    d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
    scale = (d * scales).reshape(n * 8, 2)  # two 16-value sub-blocks per 32 values
    low = ql.reshape(n, -1, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    low = (low & np.uint8(0x0F)).reshape(n, -1, 32)
    high = qh.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = (high & np.uint8(0x03)).reshape(n, -1, 32)
    q = ((low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)).reshape(n * 8, 32)
    return np.concatenate([scale.view(np.uint8), q.view(np.uint8)], axis=1)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[n, 32] values in 0..15 → [n, 16] bytes: value j in the low nibble of byte j, j + 16 in its high."""
    return (q[:, :16] | (q[:, 16:] << np.uint8(4))).astype(np.uint8)


def dequantize(rows: np.ndarray, format_id: int) -> np.ndarray:
    """Our rows → float32 [out_features, in_features], the values the kernel multiplies by."""
    out = rows.shape[0]
    blocks = np.ascontiguousarray(rows).reshape(-1, BLOCK_BYTES[format_id])
    if format_id == Q8_0:
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        values = d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    elif format_id == Q5_0:
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        high = blocks[:, 2:6].copy().view(np.uint32) >> np.arange(32, dtype=np.uint32)
        low = _unnibble(blocks[:, 6:])
        q = (low | ((high & np.uint32(1)).astype(np.uint8) << np.uint8(4))).astype(np.int8) - np.int8(16)
        values = d * q.astype(np.float32)
    elif format_id == Q4F:
        scale, minimum = blocks[:, 0:4].copy().view(np.float32), blocks[:, 4:8].copy().view(np.float32)
        values = scale * _unnibble(blocks[:, 8:]).astype(np.float32) - minimum
    else:
        scale = np.repeat(blocks[:, :8].copy().view(np.float32), 16, axis=1)
        values = scale * blocks[:, 8:].copy().view(np.int8).astype(np.float32)
    return values.reshape(out, -1)


def _unnibble(packed: np.ndarray) -> np.ndarray:
    return np.concatenate([packed & np.uint8(0x0F), packed >> np.uint8(4)], axis=1)

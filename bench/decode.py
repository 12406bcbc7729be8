"""Decode speed of omnilive's LLM engine vs transformers on the same weights, in one run.

Prints, never asserts. The model is the embedded default's Qwen2.5-Coder-0.5B (dequantised
from its packaged GGUF) unless --gguf names another file. Measured, each after a warm-up:
  - transformers `generate` (greedy, batch 1) on a transformers Qwen2ForCausalLM holding the
    same weights in the same dtype: the reference;
  - omnilive's LLMEngine, batch 1, with the same dtype, and with int8 linear weights;
  - omnilive's LLMEngine aggregate decode at batch 4 and 8 (continuous batching);
  - the memory-bandwidth bound: weight bytes read per token ÷ measured copy bandwidth.

    python bench/decode.py [--threads 2] [--new-tokens 32] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from omnilive.backends import assets
from omnilive.engine.llm_engine import LLMEngine
from omnilive.engine.types import SamplingParams
from omnilive.model.gguf_loader import load_gguf
from omnilive.model.weights import resolve_dtype

PROMPT = "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n"


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9  # read + write


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of every weight a decode step reads; the embedding table is only indexed."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    embed = model.model.embed_tokens.weight
    tied = model.lm_head.weight is embed if hasattr(model.lm_head, "weight") else False
    return total - (0 if tied else embed.numel() * embed.element_size())


def ours_tokens_per_s(model, tokenizer, batch: int, new_tokens: int) -> float:
    engine = LLMEngine(model, tokenizer, max_slots=batch, context_length=512)
    ids = tokenizer.encode(PROMPT)
    for i in range(batch):
        engine.add_request(f"r{i}", ids + tokenizer.encode(f" {i}"), SamplingParams(temperature=0, max_tokens=new_tokens, stop=()))
    while any(r.num_uncomputed > 1 for r in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()  # prefill outside the timing
    started, produced = time.perf_counter(), 0
    while engine.has_work():
        produced += sum(len(o.token_ids) for o in engine.step())
    return produced / (time.perf_counter() - started)


def transformers_tokens_per_s(model, tokenizer, new_tokens: int) -> float:
    from transformers import Qwen2Config as HFConfig
    from transformers import Qwen2ForCausalLM as HFQwen2

    c = model.config
    hf_config = HFConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings,
    )
    reference = HFQwen2(hf_config).to(model.dtype)  # rotary tables are built here, not loaded
    reference.load_state_dict(model.state_dict(), strict=True)
    reference.eval()
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        reference.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        t0 = time.perf_counter()
        reference.generate(ids, **kwargs)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
        prefill = time.perf_counter() - t0
    return (new_tokens - 1) / (total - prefill)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    path = args.gguf or assets.qwen_coder_gguf(None)
    model, _, tokenizer = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=dtype)
    bandwidth = copy_bandwidth_gbs()
    per_token = weight_bytes_per_token(model)
    bound = bandwidth * 1e9 / per_token

    with torch.inference_mode():
        ours = ours_tokens_per_s(model, tokenizer, 1, args.new_tokens)
        ours = max(ours, ours_tokens_per_s(model, tokenizer, 1, args.new_tokens))  # second run: warm
    reference = transformers_tokens_per_s(model, tokenizer, args.new_tokens)
    int8_model, _, _ = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=dtype, int8_weights=dtype != torch.float32)
    with torch.inference_mode():
        ours_int8 = ours_tokens_per_s(int8_model, tokenizer, 1, args.new_tokens)
        batched = {b: ours_tokens_per_s(int8_model, tokenizer, b, args.new_tokens) for b in (4, 8)}

    print(f"model {os.path.basename(str(path))}, {dtype}, {args.threads} threads, {os.cpu_count()} cores")
    print(f"copy bandwidth {bandwidth:.1f} GB/s; {per_token / 1e9:.2f} GB of weights read per token → bound {bound:.1f} tok/s")
    print(f"transformers generate, batch 1: {reference:.1f} tok/s ({reference / bound:.2f} of bound)")
    print(f"omnilive, batch 1:              {ours:.1f} tok/s ({ours / bound:.2f} of bound, {ours / reference:.2f}x transformers)")
    print(f"omnilive int8 weights, batch 1: {ours_int8:.1f} tok/s ({ours_int8 / reference:.2f}x transformers)")
    for b, rate in batched.items():
        print(f"omnilive int8 weights, batch {b}: {rate:.1f} tok/s aggregate ({rate / ours_int8:.2f}x batch 1)")


if __name__ == "__main__":
    main()

"""Decode speed of omnilive's LLM engine vs transformers on the same weights, in one run.

Prints, never asserts. The model is the embedded default's Qwen2.5-Coder-0.5B (dequantised
from its packaged GGUF) unless --gguf names another file, or a Qwen2.5-Omni checkpoint
directory with --model (see below). GGUF mode measures, each after a warm-up:
  - transformers `generate` (greedy, batch 1) on a transformers Qwen2ForCausalLM holding the
    same weights in the same dtype: the reference;
  - omnilive's LLMEngine, batch 1, with the same dtype, and with int8 linear weights;
  - omnilive's LLMEngine aggregate decode at batch 4 and 8 (continuous batching);
  - the memory-bandwidth bound: weight bytes read per token ÷ measured copy bandwidth.

    python bench/decode.py [--threads 2] [--new-tokens 32] [--dtype bfloat16]

--model DIR times a Qwen2.5-Omni thinker, text only, batch 1, greedy: omnilive's OmniThinker
(load_thinker, prefill + one-token decode steps over a slot KV cache: the model alone, no
engine) against transformers' Qwen2_5OmniThinkerForConditionalGeneration `generate`, same
dtype, same prompt ids (from DIR/tokenizer.json); prefill time, decode tok/s, the ratio, and
the fraction of the bandwidth bound. The models are loaded one after the other, never both.

--kv-compare (GGUF model, int8 weights unless float32, as the embedded server runs it) times
the same greedy decode (model forward + argmax, batch 1 and 4) over the slot cache (KVCache)
and the engine's paged cache (PagedKVCache, rows on scattered blocks), one step of each in
turn, and prints the ratio of their median step times (paged speed / slot speed; 1.0 =
equal), and the time of the cache's own stores and reads per step.

--make-random-3b DIR writes a random-weight checkpoint of the real Qwen2.5-Omni-3B thinker's
text shape (bf16; --layers N for fewer layers of the real width) with tiny vision and audio
towers (a text decode never touches them), plus the packaged Qwen2.5 tokenizer.json (the
Omni models share its vocabulary and chat tokens):

    python bench/decode.py --make-random-3b /tmp/omni3b && python bench/decode.py --model /tmp/omni3b
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import torch

from omnilive.backends import assets
from omnilive.engine.llm_engine import LLMEngine
from omnilive.types import SamplingParams
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
    """Bytes of every weight a decode step reads (the decoder `model` and `lm_head`, not an
    omni model's media towers); the embedding table is only indexed."""
    tensors = {id(t): t for part in (model.model, model.lm_head) for t in (*part.parameters(), *part.buffers())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    embed = model.model.embed_tokens.weight
    tied = model.lm_head.weight is embed if hasattr(model.lm_head, "weight") else False
    return total - (0 if tied else embed.numel() * embed.element_size())


def ours_tokens_per_s(model, tokenizer, batch: int, new_tokens: int, ids: list[int] | None = None) -> float:
    """Tokens per second of `batch` greedy streams of the prompt `ids` (PROMPT by default), each
    made distinct by one more token, stepped together (continuous batching); prefill not timed."""
    ids = tokenizer.encode(PROMPT) if ids is None else ids
    engine = LLMEngine(model, tokenizer, max_slots=batch, context_length=max(512, len(ids) + new_tokens + 16))
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
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        reference.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        t0 = time.perf_counter()
        reference.generate(ids, **kwargs)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
        prefill = time.perf_counter() - t0
    return (new_tokens - 1) / (total - prefill)


def lockstep_decode_step_s(model, caches: dict, rows: torch.Tensor, prompt_ids: list[int], new_tokens: int):
    """Greedy decode of len(rows) copies of the prompt through every cache in lockstep (each
    step runs once per cache, back to back, so load from other processes hits them alike).
    Returns per cache the seconds of each decode step and the tokens it produced."""
    B, L = len(rows), len(prompt_ids)
    positions = torch.arange(L).expand(B, L)
    tokens, seconds, produced = {}, {name: [] for name in caches}, {name: [] for name in caches}
    for name, cache in caches.items():
        hidden = model(torch.tensor([prompt_ids] * B), positions, cache, rows)
        tokens[name] = model.compute_logits(hidden[:, -1]).argmax(-1)
    for step in range(new_tokens):
        for name, cache in caches.items():
            started = time.perf_counter()
            hidden = model(tokens[name][:, None], torch.full((B, 1), L + step), cache, rows)
            tokens[name] = model.compute_logits(hidden[:, -1]).argmax(-1)
            seconds[name].append(time.perf_counter() - started)
            produced[name].append(tokens[name].tolist())
    return seconds, produced


def cache_ops_ms(model, cache, rows: torch.Tensor, key_len: int, repeats: int = 20) -> float:
    """Milliseconds per decode step spent in the cache alone: building the step's writer, then
    every layer's key and value store and read (what differs between the two caches)."""
    c = model.config
    B = len(rows)
    new = torch.randn(B, c.num_key_value_heads, 1, c.attention_head_dim).to(cache.k.dtype)
    positions = torch.full((B, 1), key_len - 1)
    started = time.perf_counter()
    for _ in range(repeats):
        write = cache.writer(rows, positions)
        for layer in range(c.num_hidden_layers):
            for part in (cache.k[layer], cache.v[layer]):
                write.store(part, new)
                write.read(part)
    return (time.perf_counter() - started) / repeats * 1e3


def kv_compare_main(args, dtype: torch.dtype) -> None:
    path = args.gguf or assets.qwen_coder_gguf(None)
    int8 = dtype != torch.float32  # as the embedded server runs it
    model, _, tokenizer = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=dtype, int8_weights=int8)
    ids = tokenizer.encode(PROMPT)
    max_len = len(ids) + args.new_tokens + 1
    print(f"model {os.path.basename(str(path))}, {dtype}{' int8 weights' if int8 else ''}, {args.threads} threads; "
          f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, slot and paged steps interleaved")
    with torch.inference_mode():
        for batch in (1, 4):
            rows = torch.arange(batch)
            slot = model.make_cache(batch, max_len)
            paged = model.make_paged_cache(batch, max_len, block_size=16)
            scattered = torch.randperm(paged.num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
            per_row = paged.max_blocks_per_row
            for row in range(batch):  # rows on scattered blocks, as after some churn
                paged.set_blocks(row, 0, scattered[row * per_row : (row + 1) * per_row])
            caches = {"slot": slot, "paged": paged}
            lockstep_decode_step_s(model, caches, rows, ids, 2)  # warm-up
            seconds, produced = lockstep_decode_step_s(model, caches, rows, ids, args.new_tokens)
            median = {name: statistics.median(steps) for name, steps in seconds.items()}
            total = {name: sum(steps) for name, steps in seconds.items()}
            ops = {name: min(cache_ops_ms(model, cache, rows, max_len - 1) for _ in range(3)) for name, cache in caches.items()}
            print(f"batch {batch}: median step slot {1e3 * median['slot']:.1f} ms, paged {1e3 * median['paged']:.1f} ms "
                  f"(paged speed / slot speed {median['slot'] / median['paged']:.3f}; from total times {total['slot'] / total['paged']:.3f}); "
                  f"same tokens: {produced['slot'] == produced['paged']}; cache store+read per step at "
                  f"{max_len - 1} keys: slot {ops['slot']:.2f} ms, paged {ops['paged']:.2f} ms")


# Qwen2.5-Omni thinker mode (--model, --make-random-3b)

OMNI_3B_TEXT = {  # Qwen2.5-Omni-3B's thinker text_config
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
TINY_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 2048,
               "fullatt_block_indexes": [0]}
TINY_AUDIO = {"encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 48, "d_model": 32,
              "output_dim": 2048}


def make_random_omni(directory: Path, layers: int, dtype: torch.dtype) -> None:
    """A thinker-only Qwen2.5-Omni checkpoint (config.json, sharded safetensors + index) of
    random weights, built on the meta device (no 3B random init) and saved with save_pretrained."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    thinker = {"text_config": {**OMNI_3B_TEXT, "num_hidden_layers": layers},
               "vision_config": TINY_VISION, "audio_config": TINY_AUDIO,
               "vision_start_token_id": 151652, "vision_end_token_id": 151653}  # the real config has them
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(config)
    model = model.to(dtype).to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # norms near 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:  # scaled so activations stay O(1) through the layers
                scale = 0.1 if p.ndim == 1 else 1.0 / p.shape[-1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=generator, dtype=dtype) * scale)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="2GB")
    write_packaged_tokenizer(directory)


def write_packaged_tokenizer(directory: Path) -> None:
    """tokenizer.json of the packaged Qwen2.5-Coder GGUF (read from its metadata only)."""
    from gguf import GGUFReader

    from omnilive.model.gguf_loader import read_metadata
    from omnilive.model.tokenizer import Tokenizer

    meta = read_metadata(GGUFReader(str(assets.qwen_coder_gguf(None))))
    Tokenizer.from_gguf_fields(meta).backend.save(str(directory / "tokenizer.json"))


def omni_prompt_ids(directory: Path) -> list[int]:
    from tokenizers import Tokenizer as HFTokenizer

    return HFTokenizer.from_file(str(directory / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids


def ours_omni_decode(thinker, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tok/s, greedy tokens): the prompt in one forward pass, then one
    decode step per token with TMRoPE ids = cache position + the prompt's rope delta."""
    cache = thinker.make_cache(1, len(ids) + new_tokens + 1)
    slot = torch.tensor([0])
    started = time.perf_counter()
    prepared = thinker.prepare_prompt(ids)
    hidden = thinker(cache=cache, slots=slot, **prepared.prefill_inputs())[0]  # [T, H]
    tokens = [int(thinker.compute_logits(hidden[-1]).argmax())]
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(new_tokens - 1):
        position = torch.tensor([[len(ids) + index]])
        hidden = thinker(torch.tensor([[tokens[-1]]]), position, cache, slot, rope_positions=position + prepared.rope_delta)
        tokens.append(int(thinker.compute_logits(hidden[0, -1]).argmax()))
    return prefill, (new_tokens - 1) / (time.perf_counter() - started), tokens


def transformers_omni_decode(directory: Path, dtype: torch.dtype, ids: list[int], new_tokens: int):
    """(prefill seconds, decode tok/s, greedy tokens) of transformers' thinker `generate`."""
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    config = Qwen2_5OmniConfig.from_pretrained(directory).thinker_config
    reference = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(directory, config=config, dtype=dtype).eval()
    return time_generate(reference, ids, new_tokens)


def time_generate(model, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tok/s, greedy tokens) of a transformers model's `generate`,
    after a warm-up; it never stops before `new_tokens`."""
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    greedy = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, **greedy)  # warm-up
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, **greedy)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **greedy)
        total = time.perf_counter() - t0
    return prefill, (new_tokens - 1) / (total - prefill), out[0, len(ids):].tolist()


def omni_main(args, dtype: torch.dtype) -> None:
    from omnilive.model.omni_checkpoint import load_thinker

    directory = Path(args.model)
    ids = omni_prompt_ids(directory)
    bandwidth = copy_bandwidth_gbs()
    started = time.perf_counter()
    thinker = load_thinker(directory, dtype)
    load_s = time.perf_counter() - started
    per_token = weight_bytes_per_token(thinker)
    bound = bandwidth * 1e9 / per_token
    text = thinker.config
    with torch.inference_mode():
        ours_omni_decode(thinker, ids, 2)  # warm-up
        ours_prefill, ours, ours_tokens = ours_omni_decode(thinker, ids, args.new_tokens)
    del thinker
    gc.collect()
    ref_prefill, reference, ref_tokens = transformers_omni_decode(directory, dtype, ids, args.new_tokens)
    same = next((i for i, (a, b) in enumerate(zip(ours_tokens, ref_tokens)) if a != b), len(ours_tokens))

    print(f"thinker {directory.name}: hidden {text.hidden_size}, {text.num_hidden_layers} layers, "
          f"{text.num_attention_heads}/{text.num_key_value_heads} heads, {dtype}, {args.threads} threads, "
          f"{os.cpu_count()} cores; omnilive load {load_s:.1f} s")
    print(f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, greedy; first {same} tokens identical")
    print(f"copy bandwidth {bandwidth:.1f} GB/s; {per_token / 1e9:.2f} GB of weights read per token → bound {bound:.2f} tok/s")
    print(f"transformers: prefill {ref_prefill:.2f} s, decode {reference:.2f} tok/s ({reference / bound:.2f} of bound)")
    print(f"omnilive:     prefill {ours_prefill:.2f} s, decode {ours:.2f} tok/s ({ours / bound:.2f} of bound, "
          f"{ours / reference:.2f}x transformers)")


def gguf_main(args, dtype: torch.dtype) -> None:
    path = args.gguf or assets.qwen_coder_gguf(None)
    model, _, tokenizer = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=dtype)
    bandwidth = copy_bandwidth_gbs()
    per_token = weight_bytes_per_token(model)
    bound = bandwidth * 1e9 / per_token

    with torch.inference_mode():
        ours = ours_tokens_per_s(model, tokenizer, 1, args.new_tokens)
        ours = max(ours, ours_tokens_per_s(model, tokenizer, 1, args.new_tokens))  # second run: warm
    plain, _, _ = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=dtype, pack_weights=False)
    reference = transformers_tokens_per_s(plain, tokenizer, args.new_tokens)  # the same weights, unpacked
    del plain
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--model", default=None, help="a Qwen2.5-Omni checkpoint directory: time its thinker")
    ap.add_argument("--make-random-3b", default=None, metavar="DIR",
                    help="write a random Qwen2.5-Omni-3B-shaped thinker checkpoint to DIR and exit")
    ap.add_argument("--kv-compare", action="store_true", help="time decode over the slot vs the paged KV cache")
    ap.add_argument("--layers", type=int, default=36, help="decoder layers for --make-random-3b (real: 36)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.make_random_3b:
        started = time.perf_counter()
        make_random_omni(Path(args.make_random_3b), args.layers, torch.bfloat16)
        print(f"wrote {args.make_random_3b} ({args.layers} layers) in {time.perf_counter() - started:.0f} s")
        return
    dtype = resolve_dtype(args.dtype)
    if args.kv_compare:
        kv_compare_main(args, dtype)
        return
    (omni_main if args.model else gguf_main)(args, dtype)


if __name__ == "__main__":
    main()

"""Decode speed of a native text checkpoint (Qwen3, Qwen3-MoE) or of a Qwen3-VL's text decode
(Qwen3-VL, Qwen3-VL-MoE): omnilive vs transformers, in one run.

Prints, never asserts. Both load the same directory in the same dtype, one after the other
(never both in memory), and decode the same prompt greedily at batch 1: omnilive's engine
(LLMEngine over the paged cache, as `omnilive serve --model DIR` runs it) against transformers'
`generate`. Also prints the memory-bandwidth bound: bytes of weights one decode step reads (for
a MoE, the attention, router and the `num_experts_per_tok` experts a token uses, i.e. the active
parameters) ÷ measured copy bandwidth.

    python bench/decode_text.py --make-random qwen3-4b /tmp/qwen3-4b [--layers 8]
    python bench/decode_text.py --model /tmp/qwen3-4b [--threads 2] [--new-tokens 16] [--dtype bfloat16]
                                [--prompt-tokens 20 1000]

--prompt-tokens: time to first token (the prefill) at these prompt lengths too (a longer prompt
repeats the question's text), ours vs transformers; decode is timed at the first length.

--make-random writes a random-weight checkpoint of a real model's shape (qwen3-4b: Qwen3-4B;
qwen3-30b-a3b: Qwen3-30B-A3B; qwen3-vl-4b: Qwen3-VL-4B's decoder; qwen3-vl-30b-a3b:
Qwen3-VL-30B-A3B's, experts fused) with --layers of its layers (all by default), plus the
packaged Qwen2.5 tokenizer.json (same vocabulary and chat tokens). A Qwen3-VL one gets a tiny
one-block vision tower: a text decode never runs it, and its weights are not counted.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import torch

from decode import copy_bandwidth_gbs, time_generate, write_packaged_tokenizer
from omnilive.backends.registry import loader_for
from omnilive.engine.llm_engine import LLMEngine
from omnilive.model.omni_checkpoint import read_config
from omnilive.model.weights import resolve_dtype
from omnilive.types import SamplingParams

PROMPT = "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n"
SHAPES = {
    "qwen3-4b": ("qwen3", {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                           "tie_word_embeddings": True}),
    "qwen3-30b-a3b": ("qwen3_moe", {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                                    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                                    "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                                    "norm_topk_prob": True, "tie_word_embeddings": False}),
    "qwen3-vl-4b": ("qwen3_vl", {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                 "tie_word_embeddings": True}),
    "qwen3-vl-30b-a3b": ("qwen3_vl_moe", {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                                          "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                                          "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                                          "tie_word_embeddings": False}),
}
VL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
TINY_VISION = {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "deepstack_visual_indexes": [0]}


def model_classes(model_type: str):
    """(config class, model class) of transformers for a SHAPES model type."""
    import transformers

    return {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
            "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
            "qwen3_vl": (transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration),
            "qwen3_vl_moe": (transformers.Qwen3VLMoeConfig, transformers.Qwen3VLMoeForConditionalGeneration)}[model_type]


def make_random(shape: str, directory: Path, layers: int | None, dtype: torch.dtype) -> None:
    model_type, sizes = SHAPES[shape]
    sizes = {**sizes, "num_hidden_layers": layers or sizes["num_hidden_layers"], "vocab_size": 151936,
             "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1e6}
    config_cls, model_cls = model_classes(model_type)
    if model_type in VL_TYPES:
        tie = sizes.pop("tie_word_embeddings")
        rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
        config = config_cls(text_config={**sizes, "rope_parameters": rope}, vision_config=TINY_VISION,
                            tie_word_embeddings=tie)
    else:
        config = config_cls(**sizes)
    with torch.device("meta"):  # no random init of billions of weights: filled below
        model = model_cls(config)
    model = model.to(dtype).to_empty(device="cpu").eval()
    model.tie_weights()  # to_empty gave lm_head its own tensor: a tied checkpoint shares it again
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms near 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:  # scaled so activations stay O(1) through the layers
                p.copy_(torch.randn(p.shape, generator=generator, dtype=dtype) / p.shape[-1] ** 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="2GB")
    write_packaged_tokenizer(directory)


def bytes_per_token(model) -> int:
    """Weights one decode step reads (of transformers' model, whose parameters are plain): every
    parameter, except the experts a token does not use, the embedding rows and a vision tower."""
    tied, text = model.config.tie_word_embeddings, model.config.get_text_config()
    total = 0
    for name, p in model.named_parameters():  # a tied head is listed once, as the embedding
        if "visual." in name:  # a Qwen3-VL's vision tower: a text decode never runs it
            continue
        if name.endswith("embed_tokens.weight"):  # one row is read, or the whole by a tied head
            total += p.numel() * p.element_size() if tied else 0
        elif ".experts." in name:  # transformers keeps each layer's experts as one 3D tensor
            total += p.numel() * p.element_size() * text.num_experts_per_tok // text.num_experts
        else:
            total += p.numel() * p.element_size()
    return total


def ours_decode(directory: Path, dtype: torch.dtype, ids: list[int], new_tokens: int, prompts: list[list[int]]):
    """(decode tok/s, tokens, TTFT seconds of each of `prompts`) through the served engine's step
    loop (prefill chunks of up to 2048 tokens: one forward for these prompts)."""
    loaded = loader_for(read_config(directory).get("model_type"), directory)(directory, dtype, "cpu")
    longest = max(len(p) for p in [ids, *prompts])
    engine = LLMEngine(loaded.thinker, loaded.tokenizer, max_slots=1, context_length=longest + new_tokens + 8,
                       prefill_chunk_tokens=2048)
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens)

    def run(request_id: str, count: int, prompt: list[int] = ids) -> tuple[list[int], list[float]]:
        engine.add_request(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=count),
                           stop_token_ids=())
        tokens, times = [], []
        while engine.has_work():
            t0 = time.perf_counter()
            outputs = engine.step()
            times.append(time.perf_counter() - t0)
            tokens += [t for out in outputs for t in out.token_ids]
        return tokens, times

    run("warm-up", 2)
    tokens, times = run("timed", greedy.max_tokens)
    ttft = [run(f"ttft-{i}", 1, prompt)[1][0] for i, prompt in enumerate(prompts)]
    # the first step is the prefill; the median step leaves out one-off costs (a MoE's experts
    # each warm up on their first use)
    return ((len(times) - 1) / sum(times[1:]), 1 / statistics.median(times[1:])), tokens, ttft


def transformers_decode(directory: Path, dtype: torch.dtype, ids: list[int], new_tokens: int,
                        prompts: list[list[int]]):
    model_type = read_config(directory)["model_type"]
    model = model_classes(model_type)[1].from_pretrained(directory, dtype=dtype).eval()
    _, rate, tokens = time_generate(model, ids, new_tokens)
    ttft = [time_generate(model, prompt, 2)[0] for prompt in prompts]
    return rate, tokens, bytes_per_token(model), ttft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-random", nargs=2, metavar=("SHAPE", "DIR"), help=f"SHAPE: {', '.join(SHAPES)}")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--model", default=None, help="a qwen3 / qwen3_moe / qwen3_vl / qwen3_vl_moe checkpoint directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt-tokens", type=int, nargs="*", default=[], help="also time the prefill at these lengths")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    if args.make_random:
        shape, directory = args.make_random
        make_random(shape, Path(directory), args.layers, dtype)
        return
    directory = Path(args.model)
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    ids = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    filler = tokenizer.encode(PROMPT.split("\n")[1] + " ", add_special_tokens=False).ids
    prompts = [(filler * (n // len(filler) + 1))[: n - len(ids)] + ids for n in args.prompt_tokens]
    bandwidth = copy_bandwidth_gbs()
    with torch.inference_mode():
        (ours, ours_median), ours_tokens, ours_ttft = ours_decode(directory, dtype, ids, args.new_tokens, prompts)
    gc.collect()
    reference, ref_tokens, per_token, ref_ttft = transformers_decode(directory, dtype, ids, args.new_tokens, prompts)
    bound = bandwidth * 1e9 / per_token
    same = next((i for i, (a, b) in enumerate(zip(ours_tokens, ref_tokens)) if a != b), len(ours_tokens))
    config = read_config(directory)
    text = config.get("text_config", config)
    print(f"{directory.name} ({config['model_type']}): hidden {text['hidden_size']}, {text['num_hidden_layers']} "
          f"layers, {dtype}, {args.threads} threads, {os.cpu_count()} cores; prompt {len(ids)} tokens, "
          f"{args.new_tokens} new, greedy; first {same} tokens identical")
    print(f"copy bandwidth {bandwidth:.1f} GB/s; {per_token / 1e9:.2f} GB read per token → bound {bound:.2f} tok/s")
    print(f"transformers generate: {reference:.2f} tok/s ({reference / bound:.2f} of bound)")
    print(f"omnilive engine:       {ours:.2f} tok/s ({ours / bound:.2f} of bound, {ours / reference:.2f}x transformers); "
          f"median step {ours_median:.2f} tok/s ({ours_median / bound:.2f} of bound)")
    for prompt, mine, theirs in zip(prompts, ours_ttft, ref_ttft):
        print(f"TTFT at {len(prompt)} prompt tokens: omnilive {mine:.2f} s, transformers {theirs:.2f} s "
              f"(ours / theirs {mine / theirs:.2f})")


if __name__ == "__main__":
    main()

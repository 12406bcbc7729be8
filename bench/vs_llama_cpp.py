"""The embedded LLM against llama.cpp on the same GGUF, same threads, in one run. Prints, never asserts.

Times greedy single-stream decode (tok/s: 1 / the median time per token) and the first token of
a ~500-token prompt (TTFT) for omnilive's LLMEngine on the GGUF's quantised weights
(model/quant_linear.py) and for llama.cpp (llama-cpp-python, a bench-only dependency). Decode
alternates one token of each (lockstep) and TTFT alternates per round, so load from other
processes hits both alike; ratios are omnilive / llama.cpp speed (above 1 = omnilive faster).
omnilive runs as served by default (`--quantize auto`: decode on the kernel, prompts on a float
copy); --kernel-prompts adds `--quantize gguf` (prompts on the kernel too), --float the float32
path (`--quantize none`). --quality compares the quantised
path's logits with the float32 model of the GGUF's dequantised weights (greedy agreement, KL).

    python bench/vs_llama_cpp.py [--threads 2] [--rounds 3] [--new-tokens 64] [--quality]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/vs_llama_cpp.py   # AVX2 only

llama-cpp-python built with GGML_NATIVE=OFF and AVX2 runs its AVX2 kernels on any CPU:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from decode import ours_tokens_per_s
from omnilive.backends import assets
from omnilive.engine.llm_engine import LLMEngine
from omnilive.model.gguf_loader import load_gguf
from omnilive.model.quant_linear import kernel_isa
from omnilive.model.weights import pick_compute_dtype
from omnilive.server.settings import Settings
from omnilive.types import SamplingParams

SHORT_PROMPT = "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n"
LONG_TEXT = ("The museum opened at nine. Visitors walked past the paintings, the statues and the old maps, "
             "and the guide told them where each piece came from and who had made it. ")


def cpu_description() -> str:
    info = open("/proc/cpuinfo").read()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    shown = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"),
                                     ("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX")) if flag in flags]
    return f"{model} ({os.cpu_count()} CPUs visible): {', '.join(shown)}"


def long_prompt(tokenizer, length: int) -> list[int]:
    ids = tokenizer.encode("<|im_start|>user\n")
    body = tokenizer.encode(LONG_TEXT * (length // 20))[: length - len(ids) - 12]
    return ids + body + tokenizer.encode("\nSummarise.<|im_end|>\n<|im_start|>assistant\n")


def ours_decode(model, tokenizer, ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    steps = OursSteps(model, tokenizer, ids, new_tokens)
    started = time.perf_counter()
    while steps.step():
        pass
    return (len(steps.tokens) - 1) / (time.perf_counter() - started), steps.tokens


class OursSteps:
    """omnilive's engine on one greedy request, one decode step per `step()` (prefill done at start)."""

    def __init__(self, model, tokenizer, ids: list[int], new_tokens: int):
        self.engine = LLMEngine(model, tokenizer, max_slots=1, context_length=len(ids) + new_tokens + 8)
        self.engine.add_request("r", ids, SamplingParams(temperature=0, max_tokens=new_tokens, stop=()))
        self.tokens: list[int] = []
        while not self.tokens:
            self.step()

    def step(self) -> bool:
        self.tokens += [t for o in self.engine.step() for t in o.token_ids]
        return self.engine.has_work()


def lockstep_decode(model, tokenizer, llm, ids: list[int], new_tokens: int) -> tuple[list[float], list[float], list[int], list[int]]:
    """Greedy decode on both, one token of omnilive then one of llama.cpp, so load from other
    processes hits both alike; returns each one's per-token seconds and tokens."""
    ours = OursSteps(model, tokenizer, ids, new_tokens)
    llm.reset()
    llm.eval(ids)
    theirs = [llama_greedy(llm)]
    ours_s, theirs_s = [], []
    for _ in range(new_tokens - 1):
        started = time.perf_counter()
        ours.step()
        ours_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        llm.eval([theirs[-1]])
        theirs.append(llama_greedy(llm))
        theirs_s.append(time.perf_counter() - started)
    return ours_s, theirs_s, ours.tokens, theirs


def ours_ttft(model, tokenizer, ids: list[int], prefill_chunk: int) -> float:
    engine = LLMEngine(model, tokenizer, max_slots=1, context_length=len(ids) + 8, prefill_chunk_tokens=prefill_chunk)
    started = time.perf_counter()
    engine.add_request("r", ids, SamplingParams(temperature=0, max_tokens=1, stop=()))
    while not any(o.token_ids for o in engine.step()):
        pass
    return time.perf_counter() - started


def llama_greedy(llm) -> int:
    """argmax of the last evaluated token's logits (llama-cpp-python keeps only those without logits_all)."""
    import numpy as np

    return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))


def llama_decode(llm, ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    llm.reset()
    llm.eval(ids)
    tokens = [llama_greedy(llm)]
    started = time.perf_counter()
    while len(tokens) < new_tokens:
        llm.eval([tokens[-1]])
        tokens.append(llama_greedy(llm))
    return (len(tokens) - 1) / (time.perf_counter() - started), tokens


def llama_ttft(llm, ids: list[int]) -> float:
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids)
    llama_greedy(llm)
    return time.perf_counter() - started


def quality(quantized, tokenizer, path, prompts: list[list[int]], new_tokens: int) -> None:
    """Greedy agreement and KL(float32 ‖ quantised) per position along the float model's greedy path."""
    reference, _, _ = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=torch.float32, pack_weights=False)
    agree, total, kls = 0, 0, []
    for ids in prompts:
        _, path_tokens = ours_decode(reference, tokenizer, ids, new_tokens)
        seq = torch.tensor([ids + path_tokens[:-1]])
        logits = {}
        for name, model in (("float", reference), ("quant", quantized)):
            cache = model.make_cache(1, seq.shape[1])
            hidden = model(seq, torch.arange(seq.shape[1])[None], cache, torch.arange(1))
            logits[name] = model.compute_logits(hidden[0, len(ids) - 1:]).double()
        p, q = logits["float"].log_softmax(-1), logits["quant"].log_softmax(-1)
        kls += (p.exp() * (p - q)).sum(-1).tolist()
        agree += int((logits["float"].argmax(-1) == logits["quant"].argmax(-1)).sum())
        total += logits["float"].shape[0]
    print(f"quality vs float32 of the dequantised GGUF, {len(prompts)} prompts x {new_tokens} positions: "
          f"top-1 agreement {agree / total:.4f}, mean KL {statistics.mean(kls):.5f}, max KL {max(kls):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--prefill-chunk", type=int, default=Settings.model_fields["prefill_chunk_tokens"].default,
                        help="omnilive's prompt tokens per engine step (default: the server's)")
    parser.add_argument("--float", action="store_true", help="also time omnilive's float32 path")
    parser.add_argument("--kernel-prompts", action="store_true", help="also time --quantize gguf (prompts on the kernel)")
    parser.add_argument("--batch", type=int, default=8, help="omnilive's aggregate decode at this batch vs batch 1 (0: skip)")
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from llama_cpp import Llama

    path = assets.qwen_coder_gguf(None)
    model, _, tokenizer = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, quantized=True, prompt_dtype=pick_compute_dtype())
    models = {"omnilive": model}
    if args.kernel_prompts:
        models["omnilive-kernel-prompts"] = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, quantized=True)[0]
    if args.float:
        models["omnilive-float32"] = load_gguf(path, cache_dir=assets.DEFAULT_CACHE_DIR, dtype=torch.float32)[0]
    llm = Llama(model_path=str(path), n_threads=args.threads, n_threads_batch=args.threads, n_ctx=2048,
                n_batch=512, verbose=False)
    short, long = tokenizer.encode(SHORT_PROMPT), long_prompt(tokenizer, args.prompt_tokens)
    print(cpu_description())
    print(f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '-')} ONEDNN_MAX_CPU_ISA="
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '-')} OMNILIVE_CPU_ISA={os.environ.get('OMNILIVE_CPU_ISA', '-')}: "
          f"omnilive kernel {kernel_isa()}; llama.cpp {llama_system_info()}")
    print(f"{args.threads} threads; decode {args.new_tokens} tokens after a {len(short)}-token prompt; "
          f"TTFT of a {len(long)}-token prompt (omnilive: {args.prefill_chunk} per step); load average {os.getloadavg()[0]:.1f}")
    with torch.inference_mode():
        for m in models.values():  # warm-up
            ours_decode(m, tokenizer, short, 4)
        llama_decode(llm, short, 4)
        rates, ttfts = {name: [] for name in (*models, "llama.cpp")}, {name: [] for name in (*models, "llama.cpp")}
        batch_gain = []
        for round_ in range(args.rounds):
            for name, m in models.items():
                ours_s, theirs_s, tokens, llama_tokens = lockstep_decode(m, tokenizer, llm, short, args.new_tokens)
                rates[name].append(1 / statistics.median(ours_s))
                ttfts[name].append(ours_ttft(m, tokenizer, long, args.prefill_chunk))
            rates["llama.cpp"].append(1 / statistics.median(theirs_s))
            ttfts["llama.cpp"].append(llama_ttft(llm, long))
            if args.batch:
                batch_gain.append(ours_tokens_per_s(model, tokenizer, args.batch, args.new_tokens, short)
                                  / ours_tokens_per_s(model, tokenizer, 1, args.new_tokens, short))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f} tok/s TTFT {ttfts[n][-1]:.2f} s" for n in rates)
                  + f"; load {os.getloadavg()[0]:.1f}")
        for name in models:
            decode = statistics.median(a / b for a, b in zip(rates[name], rates["llama.cpp"]))
            first = statistics.median(b / a for a, b in zip(ttfts[name], ttfts["llama.cpp"]))
            print(f"{name}: decode {statistics.median(rates[name]):.1f} tok/s vs llama.cpp "
                  f"{statistics.median(rates['llama.cpp']):.1f} (median of rounds of omnilive / llama.cpp: {decode:.2f}); "
                  f"TTFT {statistics.median(ttfts[name]):.2f} s vs {statistics.median(ttfts['llama.cpp']):.2f} s "
                  f"(speed ratio {first:.2f})")
        if batch_gain:
            print(f"omnilive batch {args.batch} aggregate / batch 1: median {statistics.median(batch_gain):.2f}x "
                  f"({', '.join(f'{g:.2f}' for g in batch_gain)})")
        print(f"greedy tokens equal to llama.cpp's: {sum(a == b for a, b in zip(tokens, llama_tokens))}/{len(tokens)} "
              "(both quantise activations, differently)")
        if args.quality:
            quality(model, tokenizer, path, [short, long[:200]], 32)


def llama_system_info() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    return " ".join(part.strip() for part in info.split("|") if part.strip().endswith("= 1"))


if __name__ == "__main__":
    main()

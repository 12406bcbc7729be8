"""Int8 MoE experts (OMNILIVE_QUANTIZE=int8, model/moe_int8.py): what they save, what they cost.

Prints, never asserts:
1. memory of the experts at Qwen3-Omni-30B-A3B's shapes (its config.json's numbers below), bf16
   vs int8 with one bf16 scale per output row;
2. quality on the tiny random checkpoint of the tests (tests/model/qwen3_omni_tiny.py, its
   experts made to matter: `with_louder_experts`), per dtype: the thinker teacher-forced on the
   float model's greedy replies, and the talker's first-code logits over its prefills: mean
   KL(float || int8) per position and the share of positions whose argmax agrees, beside the
   same for the model with every expert dropped (what the experts are worth there);
3. one expert's time per call at the real shapes (gate_up 2048 → 2 × 768, down 768 → 2048), bf16:
   the float weight (packed for oneDNN where the CPU runs bf16 natively) vs torch's int8 kernel vs
   the matmul on int8 values cast to bf16, by rows routed to the expert (best of --repeats,
   interleaved): where the int8 kernel stops paying (Int8Experts.max_rows_for_int8_kernel).

    python bench/int8_experts.py [--threads 2] [--prompts 4] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.model

from omnilive.model.moe_int8 import Int8Experts, expert_bytes
from omnilive.model.packed import can_pack, pack_weight, packed_linear
from omnilive.model.qwen3_omni import load_qwen3_omni_thinker
from omnilive.model.qwen3_omni_talker import build_talker_prefill, load_qwen3_omni_talker
from tests.model.qwen3_omni_tiny import CHAT_IDS, build_tiny_qwen3_omni, with_louder_experts

# Qwen3-Omni-30B-A3B's config.json (Instruct / Thinking; the talker is the Instruct's)
REAL_SHAPES = {
    "thinker": {"num_hidden_layers": 48, "hidden_size": 2048, "moe_intermediate_size": 768, "num_experts": 128,
                "num_experts_per_tok": 8, "mlp_only_layers": [], "decoder_sparse_step": 1},
    "talker": {"num_hidden_layers": 20, "hidden_size": 1024, "moe_intermediate_size": 384, "num_experts": 128,
               "num_experts_per_tok": 6, "mlp_only_layers": [], "decoder_sparse_step": 1},
}
GB = 1e9


def expert_memory(text_config: dict) -> tuple[int, int, int]:
    """(expert parameters, bytes in bf16, bytes in int8 + bf16 row scales) of a text_config."""
    c = text_config
    layers = sum(1 for i in range(c["num_hidden_layers"])
                 if i not in c["mlp_only_layers"] and (i + 1) % c["decoder_sparse_step"] == 0)
    H, I, E = c["hidden_size"], c["moe_intermediate_size"], c["num_experts"]
    params = layers * E * 3 * H * I
    scales = layers * E * (2 * I + H)  # one per output row of gate_up [2I, H] and down [H, I]
    return params, 2 * params, params + 2 * scales


def kl_and_agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    log_p, log_q = F.log_softmax(reference.double(), -1), F.log_softmax(other.double(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return float(kl), float((reference.argmax(-1) == other.argmax(-1)).double().mean())


@torch.inference_mode()
def thinker_logits(model, ids: list[int]) -> torch.Tensor:
    hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None], model.make_cache(1, 256), torch.tensor([0]))
    return model.compute_logits(hidden[0])


@torch.inference_mode()
def greedy_reply(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):  # whole-sequence recompute: few, tiny steps
        ids.append(int(thinker_logits(model, ids)[-1].argmax()))
    return ids


@torch.inference_mode()
def talker_logits(talker, thinker, ids: torch.Tensor) -> torch.Tensor:
    embed = thinker.model.embed_tokens
    prefill = build_talker_prefill(talker, embed, ids, embed(ids), embed(torch.tensor([30])), 46)
    hidden = talker(None, torch.arange(prefill.length)[None], talker.make_cache(1, 128), torch.tensor([0]),
                    inputs_embeds=prefill.inputs_embeds[None], rope_positions=prefill.rope_positions[:, None])
    return talker.compute_logits(hidden[0])


def without_experts(model):
    for module in model.modules():
        if isinstance(module, Int8Experts):
            module.down_scale.zero_()
    return model


def quality(directory: Path, dtype: torch.dtype, prompts: int) -> dict:
    """KL and agreement of int8 vs float, and of experts dropped vs float, thinker and talker."""
    exact_thinker = load_qwen3_omni_thinker(directory, dtype)
    int8_thinker = load_qwen3_omni_thinker(directory, dtype, int8_experts=True)
    none_thinker = without_experts(load_qwen3_omni_thinker(directory, dtype, int8_experts=True))
    exact_talker = load_qwen3_omni_talker(directory, dtype)
    int8_talker = load_qwen3_omni_talker(directory, dtype, int8_experts=True)
    none_talker = without_experts(load_qwen3_omni_talker(directory, dtype, int8_experts=True))
    c = CHAT_IDS
    thinker_rows, talker_rows = [], []  # (float, int8, none) logits per prompt
    for seed in range(prompts):
        words = torch.randint(10, 130, (16,), generator=torch.Generator().manual_seed(seed)).tolist()
        prompt = [c["im_start_token_id"], c["user_token_id"], *words, c["im_end_token_id"], c["im_start_token_id"],
                  c["assistant_token_id"]]
        ids = greedy_reply(exact_thinker, prompt, 32)
        thinker_rows.append([thinker_logits(m, ids)[len(prompt) - 1:]
                             for m in (exact_thinker, int8_thinker, none_thinker)])
        talker_ids = torch.tensor(prompt + [94])
        talker_rows.append([talker_logits(m, exact_thinker, talker_ids) for m in (exact_talker, int8_talker, none_talker)])
    thinker = [torch.cat(side) for side in zip(*thinker_rows)]
    talker = [torch.cat(side) for side in zip(*talker_rows)]
    return {
        "thinker": kl_and_agreement(thinker[0], thinker[1]), "thinker_none": kl_and_agreement(thinker[0], thinker[2]),
        "talker": kl_and_agreement(talker[0], talker[1]), "talker_none": kl_and_agreement(talker[0], talker[2]),
        "bytes": (expert_bytes(exact_thinker) + expert_bytes(exact_talker),
                  expert_bytes(int8_thinker) + expert_bytes(int8_talker)),
    }


def best_time(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def expert_timings(rows_list: list[int], repeats: int) -> list[tuple[int, float, float, float]]:
    """(rows, float s, int8 kernel s, int8 cast s) of one whole expert (gate_up, SiLU, down), bf16."""
    H, I = REAL_SHAPES["thinker"]["hidden_size"], REAL_SHAPES["thinker"]["moe_intermediate_size"]
    g = torch.Generator().manual_seed(0)
    gate_up, down = torch.randn(1, 2 * I, H, generator=g) / 40, torch.randn(1, H, I, generator=g) / 30
    experts = Int8Experts(gate_up.bfloat16(), down.bfloat16(), torch.bfloat16)
    packed = can_pack(torch.bfloat16, "cpu")
    weights = [gate_up[0].bfloat16(), down[0].bfloat16()]
    if packed:
        weights = [pack_weight(w) for w in weights]

    def float_expert(x):
        linear = packed_linear if packed else F.linear
        gate, up = linear(x, weights[0]).chunk(2, dim=-1)
        return linear(F.silu(gate) * up, weights[1])

    out = []
    for rows in rows_list:
        x = torch.randn(rows, H, generator=g).bfloat16()
        times = {"float": float("inf"), "kernel": float("inf"), "cast": float("inf")}
        for _ in range(3):  # interleaved rounds
            times["float"] = min(times["float"], best_time(lambda: float_expert(x), repeats))
            experts.max_rows_for_int8_kernel = 1 << 30
            times["kernel"] = min(times["kernel"], best_time(lambda: experts(0, x), repeats))
            experts.max_rows_for_int8_kernel = 0
            times["cast"] = min(times["cast"], best_time(lambda: experts(0, x), repeats))
        out.append((rows, times["float"], times["kernel"], times["cast"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 2, 4, 8, 16, 64])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("Qwen3-Omni-30B-A3B experts (config.json shapes), bf16 vs int8 + bf16 row scales:")
    saved = 0
    for part, config in REAL_SHAPES.items():
        params, bf16, int8 = expert_memory(config)
        saved += bf16 - int8
        print(f"  {part:8} {params / 1e9:6.2f} B expert parameters: {bf16 / GB:6.2f} GB bf16 -> {int8 / GB:6.2f} GB "
              f"int8 (saves {(bf16 - int8) / GB:.2f} GB)")
    print(f"  together the int8 experts save {saved / GB:.2f} GB")

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_qwen3_omni(Path(tmp) / "tiny", seed=5)
        loud = with_louder_experts(Path(tmp) / "tiny", Path(tmp) / "loud")
        print(f"\ntiny checkpoint (louder experts), {args.prompts} prompts: mean KL(float || x) per position and "
              "argmax agreement, x = int8 experts [x = experts dropped]")
        for dtype in (torch.float32, torch.bfloat16):
            q = quality(loud, dtype, args.prompts)
            cells = [f"{part} KL {q[part][0]:.2e} agreement {q[part][1]:.3f} [{q[part + '_none'][0]:.2e}, "
                     f"{q[part + '_none'][1]:.3f}]" for part in ("thinker", "talker")]
            print(f"  {str(dtype).removeprefix('torch.'):8} {' | '.join(cells)} | expert bytes int8 / float = "
                  f"{q['bytes'][1] / q['bytes'][0]:.3f}")

    print(f"\none expert at the real shapes (bf16, {args.threads} threads), ms per call, best of {args.repeats}:")
    print(f"{'rows':>5} {'float':>8} {'int8 kernel':>12} {'int8 cast':>10}")
    for rows, float_s, kernel_s, cast_s in expert_timings(args.rows, args.repeats):
        print(f"{rows:>5} {float_s * 1e3:>8.3f} {kernel_s * 1e3:>12.3f} {cast_s * 1e3:>10.3f}")


if __name__ == "__main__":
    main()

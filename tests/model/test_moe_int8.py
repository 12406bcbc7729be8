"""Int8 MoE experts (model/moe_int8.py): per-row quantisation, both compute paths, and their
quality cost on the tiny Qwen3-Omni checkpoint (thinker and talker) against the float model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from omnilive.model.moe import FusedExperts, FusedSparseMoE, SparseMoE
from omnilive.model.moe_int8 import Int8Experts, expert_bytes, quantize_experts_int8, quantize_rows
from omnilive.model.omni_checkpoint import THINKER_PREFIX, load_prefixed_tensors
from omnilive.model.qwen3_omni import load_qwen3_omni_thinker
from omnilive.model.qwen3_omni_talker import build_talker_prefill, load_qwen3_omni_talker
from omnilive.model.weights import WeightsMismatchError
from tests.model.qwen3_omni_tiny import CHAT_IDS, build_tiny_qwen3_omni, with_louder_experts

pytest.importorskip("transformers")

IM_START, IM_END, USER, ASSISTANT = (CHAT_IDS[f"{name}_token_id"] for name in ("im_start", "im_end", "user", "assistant"))


def kl_and_agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || other) per position of two logits [T, V], and the share of positions
    whose argmax agrees."""
    log_p, log_q = F.log_softmax(reference.double(), -1), F.log_softmax(other.double(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return float(kl), float((reference.argmax(-1) == other.argmax(-1)).double().mean())


def test_rows_round_to_within_half_a_step():
    weight = torch.randn(3, 40, 32, generator=torch.Generator().manual_seed(0))
    weight[0, 5] = 0.0  # an all-zero row keeps a finite scale
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and scale.shape == (3, 40)
    assert int(q.abs().max()) == 127
    assert ((q.float() * scale[..., None] - weight).abs() <= scale[..., None] / 2 + 1e-7).all()
    assert (q[0, 5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_compute_paths_equal_the_dequantised_expert(dtype):
    """The int8 kernel (few rows) and the matmul on cast values (many rows) both compute the
    SwiGLU of the dequantised weights."""
    g = torch.Generator().manual_seed(1)
    E, H, I = 3, 64, 48
    gate_up, down = torch.randn(E, 2 * I, H, generator=g) / 8, torch.randn(E, H, I, generator=g) / 8
    experts = Int8Experts(gate_up.to(dtype), down.to(dtype), dtype)
    dequantised = FusedExperts(H, I, E)
    dequantised.gate_up_proj.data = experts.gate_up_int8.float() * experts.gate_up_scale.float()[..., None]
    dequantised.down_proj.data = experts.down_int8.float() * experts.down_scale.float()[..., None]
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    for rows in (1, 4, 9):  # 1 and 4: the int8 kernel; 9: the cast matmul
        x = torch.randn(rows, H, generator=g)
        torch.testing.assert_close(experts(2, x.to(dtype)).float(), dequantised(2, x), **tolerance)


@torch.inference_mode()
def test_every_moe_layout_is_quantised_and_gives_the_same_mix():
    torch.manual_seed(3)
    sparse = SparseMoE(32, 16, num_experts=4, top_k=2, norm_topk_prob=True)
    fused = FusedSparseMoE(32, 16, num_experts=4, top_k=2)
    with torch.no_grad():  # the same experts in both layouts
        fused.gate.weight.copy_(sparse.gate.weight)
        for index, expert in enumerate(sparse.experts):
            fused.experts.gate_up_proj[index] = torch.cat([expert.gate_proj.weight, expert.up_proj.weight])
            fused.experts.down_proj[index] = expert.down_proj.weight
    x = torch.randn(6, 32)
    float_out = sparse(x)
    assert quantize_experts_int8(torch.nn.ModuleList([sparse, fused])) == 2
    assert isinstance(sparse.experts, Int8Experts) and isinstance(fused.experts, Int8Experts)
    torch.testing.assert_close(sparse(x), fused(x))
    assert 0 < float((sparse(x) - float_out).abs().max()) < 0.05 * float(float_out.abs().max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni_int8"), seed=5)


@pytest.fixture(scope="module")
def loud(tiny, tmp_path_factory):
    """The tiny checkpoint with experts that matter (with_louder_experts)."""
    return with_louder_experts(tiny.directory, tmp_path_factory.mktemp("qwen3_omni_int8_loud"))


def without_experts(model):
    """`model` (int8 experts) with every expert's output zeroed: what the experts are worth."""
    for module in model.modules():
        if isinstance(module, Int8Experts):
            module.down_scale.zero_()
    return model


@torch.inference_mode()
def greedy_reply(model, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens of the float thinker (the sequence both models then read)."""
    cache, ids = model.make_cache(1, 128), list(prompt)
    hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None], cache, torch.tensor([0]))
    for _ in range(steps):
        ids.append(int(model.compute_logits(hidden[0, -1]).argmax()))
        hidden = model(torch.tensor([[ids[-1]]]), torch.tensor([[len(ids) - 1]]), cache, torch.tensor([0]))
    return ids


@torch.inference_mode()
def sequence_logits(model, ids: list[int]) -> torch.Tensor:
    hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None], model.make_cache(1, 128), torch.tensor([0]))
    return model.compute_logits(hidden[0])


def test_int8_thinker_stays_close_to_float(loud):
    """Teacher-forced on the float model's greedy reply: logit KL and argmax agreement per
    position against what dropping the experts costs; and the experts' memory (float32 here: a
    quarter; bf16 models: a half)."""
    exact = load_qwen3_omni_thinker(loud, dtype=torch.float32)
    int8 = load_qwen3_omni_thinker(loud, dtype=torch.float32, int8_experts=True)
    assert sum(isinstance(m, Int8Experts) for m in int8.modules()) == 2  # layers 0 and 2 (1 is dense)
    assert expert_bytes(int8) < 0.3 * expert_bytes(exact)  # a quarter, plus a scale per row of 48 or 64
    words = torch.randint(10, 130, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    prompt = [IM_START, USER, *words, IM_END, IM_START, ASSISTANT]
    ids = greedy_reply(exact, prompt, 24)
    logits = sequence_logits(exact, ids)
    kl, agreement = kl_and_agreement(logits, sequence_logits(int8, ids))
    kl_none, agreement_none = kl_and_agreement(logits, sequence_logits(without_experts(int8), ids))
    assert kl_none > 1e-2 and agreement_none < 0.8, "the experts must matter for this test to mean anything"
    assert 0 < kl < 1e-3 * kl_none, (kl, kl_none)  # 0 would mean nothing was quantised
    assert agreement >= 0.95, agreement


@torch.inference_mode()
def test_int8_talker_stays_close_to_float(tiny, loud):
    """The first-code logits of a talker prefill (every position), int8 experts vs float."""
    thinker = load_qwen3_omni_thinker(tiny.directory, dtype=torch.float32)
    exact = load_qwen3_omni_talker(loud, dtype=torch.float32)
    int8 = load_qwen3_omni_talker(loud, dtype=torch.float32, int8_experts=True)
    assert sum(isinstance(m, Int8Experts) for m in int8.modules()) == 2
    assert expert_bytes(int8) < 0.3 * expert_bytes(exact)
    embed = thinker.model.embed_tokens
    words = torch.randint(10, 130, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    ids = torch.tensor([IM_START, USER, *words, IM_END, IM_START, ASSISTANT, 94])
    prefill = build_talker_prefill(exact, embed, ids, embed(ids), embed(torch.tensor([30])), 46)

    def logits(talker):
        hidden = talker(None, torch.arange(prefill.length)[None], talker.make_cache(1, 64), torch.tensor([0]),
                        inputs_embeds=prefill.inputs_embeds[None], rope_positions=prefill.rope_positions[:, None])
        return talker.compute_logits(hidden[0])

    reference = logits(exact)
    kl, agreement = kl_and_agreement(reference, logits(int8))
    kl_none, _ = kl_and_agreement(reference, logits(without_experts(int8)))
    assert kl_none > 1e-3, "the experts must matter for this test to mean anything"
    assert 0 < kl < 1e-2 * kl_none, (kl, kl_none)
    assert agreement >= 0.9, agreement


def test_int8_loading_still_consumes_every_key(tiny, tmp_path):
    tensors = load_prefixed_tensors(tiny.directory, THINKER_PREFIX)
    dropped = "model.layers.0.mlp.experts.1.up_proj.weight"
    assert dropped in tensors
    (tmp_path / "config.json").write_text((tiny.directory / "config.json").read_text())
    save_file({THINKER_PREFIX + k: v for k, v in tensors.items() if k != dropped}, tmp_path / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match="experts.1.up_proj.weight"):
        load_qwen3_omni_thinker(tmp_path, dtype=torch.float32, int8_experts=True)

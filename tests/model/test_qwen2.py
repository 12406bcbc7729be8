"""Our Qwen2 / Llama / Qwen3 decoder against transformers, and cache/batch invariances (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.kv_cache import CacheFullError, KVCache
from omnilive.model.layers import Int8Linear, one_query_attention, quantize_linears_int8
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.weights import (
    WeightsMismatchError,
    load_pretrained,
    load_state_dict_strict,
)

TINY = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
}


@pytest.fixture(scope="module", params=["qwen2", "llama", "qwen3", "qwen3_moe"])
def hf_checkpoint(request, tmp_path_factory):
    """A tiny random HF model saved with save_pretrained: (directory, hf_model)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if request.param == "qwen2":
        config = transformers.Qwen2Config(**TINY, rope_theta=10000.0, tie_word_embeddings=False)
        hf = transformers.Qwen2ForCausalLM(config)
    elif request.param == "llama":  # SmolLM2-like: no biases, tied output
        config = transformers.LlamaConfig(**TINY, rope_theta=100000.0, tie_word_embeddings=True, attention_bias=False)
        hf = transformers.LlamaForCausalLM(config)
    elif request.param == "qwen3":  # q/k head norms, no biases, head_dim apart from hidden / heads, tied output
        config = transformers.Qwen3Config(**TINY, head_dim=24, rope_theta=1e6, tie_word_embeddings=True,
                                          attention_bias=False, use_sliding_window=False)
        hf = transformers.Qwen3ForCausalLM(config)
    elif request.param == "qwen3_moe":  # 4 experts, top 2, the second layer dense
        config = transformers.Qwen3MoeConfig(**TINY, head_dim=24, rope_theta=1e6, tie_word_embeddings=False,
                                             num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40,
                                             norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1])
        hf = transformers.Qwen3MoeForCausalLM(config)
    with torch.no_grad():  # random biases / norm weights, so a mix-up cannot hide behind zeros and ones
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
            elif name.endswith("mlp.gate.weight"):  # a router with clear preferences: no ties in top-k
                p.copy_(torch.randn_like(p))
    directory = tmp_path_factory.mktemp(request.param)
    hf.eval().save_pretrained(directory)
    return directory, hf


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    return load_pretrained(hf_checkpoint[0], dtype=torch.float32)


def run(model, cache, ids: list[int], start: int, slot: int = 0) -> torch.Tensor:
    """One row of tokens at positions start.. → logits [T, vocab]."""
    input_ids = torch.tensor([ids])
    positions = torch.arange(start, start + len(ids))[None]
    with torch.no_grad():
        hidden = model(input_ids, positions, cache, torch.tensor([slot]))
    return model.compute_logits(hidden)[0]


def test_logits_match_transformers(hf_checkpoint, model):
    _, hf = hf_checkpoint
    ids = torch.randint(0, TINY["vocab_size"], (1, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits[0].float()
    cache = model.make_cache(max_slots=1, max_len=32)
    ours = run(model, cache, ids[0].tolist(), start=0)
    assert ours.dtype == torch.float32
    assert (ours - expected).abs().max().item() <= 1e-4


def test_chunked_prefill_and_decode_equal_whole_prefill(model):
    ids = torch.randint(0, TINY["vocab_size"], (12,), generator=torch.Generator().manual_seed(2)).tolist()
    whole = run(model, model.make_cache(1, 32), ids, start=0)

    cache = model.make_cache(1, 32)
    chunks, start = [], 0
    for size in (5, 4, 3):
        chunks.append(run(model, cache, ids[start : start + size], start))
        start += size
    assert torch.allclose(torch.cat(chunks), whole, atol=1e-5)

    cache = model.make_cache(1, 32)
    steps = [run(model, cache, [token], position) for position, token in enumerate(ids)]
    assert torch.allclose(torch.cat(steps), whole, atol=1e-5)


def test_batch_with_different_lengths_equals_singles(model):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (7,), generator=g).tolist(), torch.randint(0, 128, (4,), generator=g).tolist()]
    next_tokens = [11, 42]

    singles = []
    for prompt, token in zip(prompts, next_tokens):
        cache = model.make_cache(1, 16)
        prefill = run(model, cache, prompt, 0)[-1]
        decode = run(model, cache, [token], len(prompt))[-1]
        singles.append((prefill, decode))

    # both rows in slots 2 and 0 of one cache; row 1 right-padded with position -1
    cache = model.make_cache(3, 16)
    slots = torch.tensor([2, 0])
    input_ids = torch.tensor([prompts[0], prompts[1] + [0, 0, 0]])
    positions = torch.tensor([list(range(7)), [0, 1, 2, 3, -1, -1, -1]])
    with torch.no_grad():
        prefill = model.compute_logits(model(input_ids, positions, cache, slots))
        decode = model.compute_logits(model(torch.tensor([[11], [42]]), torch.tensor([[7], [4]]), cache, slots))
    assert torch.allclose(prefill[0, 6], singles[0][0], atol=1e-5)
    assert torch.allclose(prefill[1, 3], singles[1][0], atol=1e-5)
    assert torch.allclose(decode[0, 0], singles[0][1], atol=1e-5)
    assert torch.allclose(decode[1, 0], singles[1][1], atol=1e-5)
    # padding was not written: slot 0 holds 4 prompt + 1 decoded token, slot 1 nothing
    assert cache.k[:, 0, :, 5:].abs().sum() == 0 and cache.k[:, 1].abs().sum() == 0


def test_strict_loader_names_the_offending_key(model):
    good = {name: t.clone() for name, t in model.state_dict().items()}
    target = Qwen2ForCausalLM(model.config)

    missing = dict(good)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(WeightsMismatchError, match=r"missing keys: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_state_dict_strict(target, missing)

    extra = dict(good, **{"model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys: model\.layers\.9\.mlp\.up_proj\.weight"):
        load_state_dict_strict(target, extra)

    misshaped = dict(good, **{"model.norm.weight": torch.zeros(3)})
    with pytest.raises(WeightsMismatchError, match=r"model\.norm\.weight: checkpoint \(3,\) vs model \(64,\)"):
        load_state_dict_strict(target, misshaped)

    load_state_dict_strict(target, good)
    assert torch.equal(target.model.norm.weight, model.model.norm.weight)


def test_config_from_dict_ignores_unknown_keys_and_reads_v5_rope():
    config = Qwen2Config.from_dict(
        dict(TINY, model_type="llama", rope_parameters={"rope_type": "default", "rope_theta": 5e5}, foo=1, dtype="bfloat16")
    )
    assert config.rope_theta == 5e5 and config.attention_bias is False and config.torch_dtype == "bfloat16"
    assert Qwen2Config.from_dict(dict(TINY, model_type="qwen2")).attention_bias is True


def test_kv_cache_slots():
    cache = KVCache(num_layers=2, max_slots=2, num_kv_heads=1, max_len=8, head_dim=4)
    assert cache.k.shape == (2, 2, 1, 8, 4)
    a, b = cache.allocate(), cache.allocate()
    assert {a, b} == {0, 1} and cache.num_free == 0
    with pytest.raises(CacheFullError):
        cache.allocate()
    cache.free(a)
    with pytest.raises(ValueError):
        cache.free(a)
    assert cache.allocate() == a


def test_int8_weights_stay_close_and_both_kernels_agree(model):
    torch.manual_seed(4)
    linear = torch.nn.Linear(64, 96).to(torch.bfloat16)
    quantized = Int8Linear(linear)
    rows = torch.randn(quantized.max_rows_for_int8_kernel + 4, 64, dtype=torch.bfloat16)
    many = quantized(rows)  # the dequantise-then-matmul path
    one_by_one = torch.cat([quantized(row[None]) for row in rows])  # the int8 kernel
    assert torch.allclose(many.float(), one_by_one.float(), atol=2e-2)
    assert (many.float() - linear(rows).float()).abs().max() < 0.05 * linear(rows).float().abs().max()

    bf16 = Qwen2ForCausalLM(model.config).to(torch.bfloat16).eval()
    load_state_dict_strict(bf16, model.state_dict())
    ids = torch.randint(0, 128, (9,), generator=torch.Generator().manual_seed(5)).tolist()
    reference = run(bf16, bf16.make_cache(1, 16), ids, 0)
    quantize_linears_int8(bf16)
    assert isinstance(bf16.lm_head, Int8Linear)
    logits = run(bf16, bf16.make_cache(1, 16), ids, 0)
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    with pytest.raises(ValueError, match="bf16"):
        quantize_linears_int8(Qwen2ForCausalLM(model.config))
    # torch's int8 kernel takes in_features in multiples of 16 only (it crashes otherwise): an
    # expert of 40 columns runs the dequantised path at any row count
    odd = torch.nn.Linear(40, 64).to(torch.bfloat16)
    assert torch.allclose(Int8Linear(odd)(rows[:1, :40]).float(), odd(rows[:1, :40]).float(), atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_query_attention_equals_fused_attention(dtype):
    """The decode path (one query per row, grouped heads, rows of different lengths) against
    torch's scaled_dot_product_attention computed in float64."""
    g = torch.Generator().manual_seed(0)
    n, nh, nkv, L, D = 3, 8, 2, 37, 16
    q = torch.randn(n, nh, D, generator=g).to(dtype)
    keys, values = (torch.randn(n, nkv, L, D, generator=g).to(dtype) for _ in range(2))
    lengths = torch.tensor([37, 5, 20])
    mask = (torch.arange(L) < lengths[:, None]).view(n, 1, 1, L)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.double().unsqueeze(2), keys.double(), values.double(), attn_mask=mask, enable_gqa=True
    ).squeeze(2)
    got = one_query_attention(q, keys, values, mask)
    assert got.dtype == dtype and got.shape == (n, nh, D)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.double(), expected, atol=tolerance, rtol=0)

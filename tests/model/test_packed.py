"""Pre-packed linears (oneDNN layout): the same numbers as F.linear (bf16: bitwise for decode
batches; float32: up to summation order), in every place a model uses them. The bf16 tests are
skipped where the CPU has no native bf16 (bf16 packing is not used there)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnilive.model.layers import Attention, Int8Linear, SwiGLU
from omnilive.model.packed import FusedPackedLinear, PackedLinear, can_pack, fuse_packed_projections, pack_decoder
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM

needs_bf16 = pytest.mark.skipif(not can_pack(torch.bfloat16, "cpu"), reason="no native bf16 matmul on this CPU")


@needs_bf16
@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17, 64, 300])
def test_packed_linear_equals_f_linear(rows):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(96, 160).to(torch.bfloat16)
    x = torch.randn(2, rows, 96, dtype=torch.bfloat16)
    reference = F.linear(x.float(), linear.weight.float(), linear.bias.float())
    packed = PackedLinear(linear)(x)
    assert packed.shape == (2, rows, 160) and packed.dtype == torch.bfloat16
    if rows <= 16:  # decode-sized batches: bitwise F.linear's result
        assert torch.equal(packed, linear(x))
    assert (packed.float() - reference).abs().max() < 0.02 * reference.abs().max()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("rows", [1, 2, 4, 16, 144, 300])
def test_packed_float32_linear_equals_f_linear(rows):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(96, 160)
    x = torch.randn(2, rows, 96)
    packed = PackedLinear(linear)
    assert packed(x).dtype == torch.float32
    torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)  # another summation order only
    # bf16 activations (autocast) are computed in the weight's float32
    torch.testing.assert_close(packed(x.to(torch.bfloat16)), linear(x.to(torch.bfloat16).float()), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_projections_equal_the_separate_linears(dtype):
    """q/k/v (with and without biases) and gate/up as one packed call: the same outputs, and
    the separate linears are dropped."""
    if not can_pack(dtype, "cpu"):
        pytest.skip("no native bf16 matmul on this CPU")
    torch.manual_seed(0)
    attention = Attention(64, 4, 2, 16, qkv_bias=True).to(dtype)
    mlp = SwiGLU(64, 96).to(dtype)
    x = torch.randn(3, 64, dtype=dtype)
    separate = [attention.q_proj(x), attention.k_proj(x), attention.v_proj(x), mlp.gate_proj(x), mlp.up_proj(x)]
    module = torch.nn.ModuleList([attention, mlp])
    assert fuse_packed_projections(module) == 2
    assert isinstance(attention.fused_qkv, FusedPackedLinear) and not hasattr(attention, "q_proj")
    assert not hasattr(mlp, "gate_proj") and hasattr(mlp, "down_proj")
    fused = [*attention.fused_qkv(x), *mlp.fused_gate_up(x)]
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0, "rtol": 0}  # bf16: bitwise
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b, **tolerance)


def test_packing_is_for_float32_and_native_bf16_on_cpu():
    assert can_pack(torch.float32, "cpu") == torch.backends.mkldnn.is_available()
    assert not can_pack(torch.float16, "cpu")
    assert not can_pack(torch.bfloat16, "meta") and not can_pack(torch.float32, "meta")


@needs_bf16
def test_packed_decoder_decodes_as_the_plain_one():
    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    plain = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    packed = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    packed.load_state_dict(plain.state_dict())
    assert pack_decoder(packed) == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    assert isinstance(packed.lm_head, PackedLinear)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        outputs = []
        for model in (plain, packed):
            cache, slots = model.make_cache(1, 32), torch.tensor([0])
            hidden = model(ids, torch.arange(12)[None], cache, slots)  # prefill
            step = model(ids[:, :1], torch.tensor([[12]]), cache, slots)  # one decode step
            outputs.append(torch.cat([model.compute_logits(hidden[0]), model.compute_logits(step[0])]))
    # prefill rows sum in another order inside oneDNN: bf16 rounding apart, never more
    assert (outputs[0] - outputs[1]).abs().max() < 0.05 * outputs[0].abs().max()
    assert torch.equal(outputs[0][-1], outputs[1][-1])  # the decode step: bitwise


@needs_bf16
def test_int8_linear_runs_batches_on_its_packed_copy():
    torch.manual_seed(3)
    linear = torch.nn.Linear(64, 96).to(torch.bfloat16)
    quantized = Int8Linear(linear)
    assert quantized.packed
    rows = torch.randn(quantized.max_rows_for_int8_kernel + 4, 64, dtype=torch.bfloat16)
    dequantized = (quantized.weight_int8.float() * quantized.scale.float()[:, None])
    reference = rows.float() @ dequantized.T + linear.bias.float()
    assert (quantized(rows).float() - reference).abs().max() < 0.02 * reference.abs().max()


@needs_bf16
def test_bf16_omni_checkpoint_loads_packed_and_computes_as_float32(tmp_path):
    pytest.importorskip("transformers")
    from omnilive.model.omni_checkpoint import load_thinker
    from omnilive.model.talker import load_talker
    from tests.model.omni_tiny import build_tiny_omni

    directory = build_tiny_omni(tmp_path / "omni", seed=2).directory
    bf16, fp32 = load_thinker(directory, "bfloat16"), load_thinker(directory, "float32")
    assert isinstance(bf16.lm_head, PackedLinear) and isinstance(bf16.model.layers[0].mlp.up_proj, PackedLinear)
    assert isinstance(fp32.lm_head, PackedLinear)  # float32 packs too (the parity tests run it)
    assert isinstance(load_talker(directory, "bfloat16").codec_head, PackedLinear)
    ids = torch.randint(0, 100, (10,), generator=torch.Generator().manual_seed(3)).tolist()
    logits = []
    with torch.inference_mode():
        for model in (bf16, fp32):
            prepared = model.prepare_prompt(ids)
            hidden = model(cache=model.make_cache(1, 16), slots=torch.tensor([0]), **prepared.prefill_inputs())
            logits.append(model.compute_logits(hidden[0]))
    assert (logits[0] - logits[1]).abs().max() < 0.05 * logits[1].abs().max()

"""The GGUF → block conversion (model/quant_formats.py) and the quantised CPU kernel
(model/quant_linear.py, kernels/quant_matmul.cpp): conversion exact against gguf's dequantize,
the kernel against a float reference for every format, instruction set and 1..9 rows, and a
tiny quantised GGUF model that decodes the same tokens alone and batched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as GGML  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from omnilive.engine.llm_engine import LLMEngine  # noqa: E402
from omnilive.model import quant_formats as qf  # noqa: E402
from omnilive.model.gguf_loader import cache_entry, load_gguf  # noqa: E402
from omnilive.model import quant_linear  # noqa: E402
from omnilive.model.quant_linear import QuantLinear, kernels, quant_matmul  # noqa: E402
from omnilive.types import SamplingParams  # noqa: E402
from tests.model.test_gguf import TINY, write_tiny_gguf  # noqa: E402

K_QUANT_BYTES = {GGML.Q4_K: 144, GGML.Q6_K: 210}  # per 256 values


def gguf_tensor(qtype: GGML, out_features: int, in_features: int, seed: int = 0) -> np.ndarray:
    """A GGUF tensor's raw blocks [out, bytes]: gguf's own quantize where it has one, else random
    bytes with small finite fp16 scales (every bit pattern of the rest is a valid block)."""
    rng = np.random.default_rng(seed)
    if qtype not in K_QUANT_BYTES:
        return quantize(rng.standard_normal((out_features, in_features)).astype(np.float32), qtype)
    size = K_QUANT_BYTES[qtype]
    blocks = rng.integers(0, 256, (out_features * in_features // 256, size), dtype=np.uint8)
    scales = (rng.random((blocks.shape[0], 2)) * 0.01).astype(np.float16).view(np.uint8)
    if qtype == GGML.Q4_K:
        blocks[:, 0:4] = scales  # d, dmin
    else:
        blocks[:, 208:210] = scales[:, :2]  # d
    return blocks.reshape(out_features, -1)


def our_rows(qtype: GGML, out_features: int, in_features: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Rows in our format for any in_features divisible by 32 (K-quants: a 256-wide tensor's first blocks)."""
    wide = -(-in_features // 256) * 256 if qtype in K_QUANT_BYTES else in_features
    rows, format_id = qf.from_gguf(gguf_tensor(qtype, out_features, wide, seed), qtype, out_features)
    rows = rows[:, : in_features // qf.BLOCK * qf.BLOCK_BYTES[format_id]]
    return torch.from_numpy(np.ascontiguousarray(rows)), format_id


def reference(x: torch.Tensor, rows: torch.Tensor, format_id: int) -> torch.Tensor:
    """x @ W.T in float64 with x quantised per 32 values as the kernel does (int8, amax / 127)."""
    weight = torch.from_numpy(qf.dequantize(rows.numpy(), format_id)).double()
    blocks = x.reshape(x.shape[0], -1, qf.BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    quantized = torch.round(blocks * inverse) * (amax / 127.0)
    return quantized.reshape(x.shape).double() @ weight.T


def kernel_isas() -> list[str]:
    module = kernels()
    if module is None:
        if shutil.which("g++") or shutil.which("c++"):
            pytest.fail("a C++ compiler is here but the quantised kernel did not build (see the log)")
        pytest.skip("no C++ compiler: the quantised kernel cannot be built here")
    return [isa for isa in ("avx2", "avx512_vnni") if module.cpu_runs(isa)]


@pytest.mark.parametrize("qtype", [GGML.Q8_0, GGML.Q5_0, GGML.Q4_K, GGML.Q6_K])
def test_conversion_keeps_the_gguf_values_exactly(qtype):
    raw = gguf_tensor(qtype, 7, 512, seed=3)
    rows, format_id = qf.from_gguf(raw, qtype, 7)
    assert rows.shape == (7, 512 // 32 * qf.BLOCK_BYTES[format_id])
    ours, theirs = qf.dequantize(rows, format_id), dequantize(raw, qtype)
    assert ours.dtype == theirs.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # bit for bit


@pytest.mark.parametrize("qtype", [GGML.Q8_0, GGML.Q5_0, GGML.Q4_K, GGML.Q6_K])
@pytest.mark.parametrize("shape", [(37, 256), (5, 96), (16, 512)])
def test_kernel_matches_reference_for_every_isa_and_row_count(qtype, shape):
    out_features, in_features = shape
    rows, format_id = our_rows(qtype, out_features, in_features, seed=out_features)
    generator = torch.Generator().manual_seed(in_features)
    for isa in kernel_isas():
        for count in range(1, 10):
            x = torch.randn(count, in_features, generator=generator)
            x[0, :32] = 0.0  # an all-zero block (scale 0) too
            y = quant_matmul(x, [rows], [format_id], [None], isa)
            expected = reference(x, rows, format_id)
            assert y.shape == (count, out_features) and y.dtype == torch.float32
            error = (y.double() - expected).abs().max().item()
            assert error <= 1e-5 * expected.abs().max().item(), (isa, count, error)


def test_avx2_and_vnni_agree_and_each_row_is_independent_of_its_batch():
    isas = kernel_isas()
    rows, format_id = our_rows(GGML.Q5_0, 40, 160)
    x = torch.randn(9, 160, generator=torch.Generator().manual_seed(0))
    for isa in isas:
        batched = quant_matmul(x, [rows], [format_id], [None], isa)
        for i in range(9):  # same numbers alone as in any chunk of the batch: batching changes no token
            assert torch.equal(quant_matmul(x[i : i + 1], [rows], [format_id], [None], isa)[0], batched[i])
    if len(isas) == 2:  # integer dot products: the instruction sets differ only in float summation order
        a, b = (quant_matmul(x, [rows], [format_id], [None], isa) for isa in isas)
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_fused_weights_equal_separate_calls_with_bias():
    isa = kernel_isas()[0]
    parts = [our_rows(qtype, out, 256, seed=out) for qtype, out in ((GGML.Q5_0, 64), (GGML.Q4_K, 21), (GGML.Q8_0, 32))]
    biases = [torch.randn(64), None, torch.randn(32)]
    x = torch.randn(3, 256)
    fused = quant_matmul(x, [r for r, _ in parts], [f for _, f in parts], biases, isa)
    separate = [quant_matmul(x, [r], [f], [b], isa) for (r, f), b in zip(parts, biases)]
    assert torch.equal(fused, torch.cat(separate, dim=1))


def test_in_features_not_a_multiple_of_32_is_refused():
    kernel_isas()
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantLinear(100, 8, qf.Q8_0)
    assert not qf.convertible(GGML.Q8_0, 100) and qf.convertible(GGML.Q8_0, 96)
    rows, format_id = our_rows(GGML.Q8_0, 4, 96)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        quant_matmul(torch.randn(1, 100), [rows], [format_id], [None])


@pytest.mark.parametrize("env, expected", [({"ATEN_CPU_CAPABILITY": "avx2"}, "avx2"), ({"OMNILIVE_CPU_ISA": "avx2"}, "avx2")])
def test_avx2_is_forced_by_the_environment(env, expected):
    kernel_isas()
    run_env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMNILIVE_CPU_ISA")} | env
    code = "from omnilive.model.quant_linear import kernel_isa; print(kernel_isa())"
    result = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=300)
    assert result.stdout.split()[-1] == expected, result.stderr


def tiny_quantized_gguf(tmp_path):
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, tie_word_embeddings=False)).eval()
    path = tmp_path / "tiny-q.gguf"
    write_tiny_gguf(hf, path, "qwen2", lambda name: GGML.Q8_0 if ".attn_v." in name or name == "output.weight" else GGML.Q5_0)
    return path


def greedy(model, tokenizer, prompts: list[list[int]], new_tokens: int = 12) -> dict[str, list[int]]:
    engine = LLMEngine(model, tokenizer, max_slots=len(prompts), context_length=64)
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, SamplingParams(temperature=0, max_tokens=new_tokens, stop=()))
    tokens = {str(i): [] for i in range(len(prompts))}
    while engine.has_work():
        for output in engine.step():
            tokens[output.request_id] += output.token_ids
    return tokens


def test_tiny_quantized_model_decodes_alone_as_batched_and_near_float(tmp_path):
    kernel_isas()
    path = tiny_quantized_gguf(tmp_path)
    model, _, tokenizer = load_gguf(path, cache_dir=tmp_path / "cache", quantized=True)
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 7 * TINY["num_hidden_layers"] + 1  # every projection and the output head
    assert model.model.layers[0].self_attn.fused_qkv is not None and model.model.layers[0].mlp.fused_gate_up is not None
    assert (cache_entry(path, tmp_path / "cache") / "model-quantized.safetensors").is_file()

    # the cached second load holds the same blocks
    again, _, _ = load_gguf(path, cache_dir=tmp_path / "cache", quantized=True)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name

    # near the float32 model of the same (dequantised) weights: only activations are rounded
    reference, _, _ = load_gguf(path, dtype=torch.float32, pack_weights=False)
    ids = torch.randint(0, 260, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = [m.compute_logits(m(ids, torch.arange(11)[None], m.make_cache(1, 16), torch.tensor([0])))[0]
                  for m in (model, reference)]
    assert (logits[0] - logits[1]).abs().max() <= 0.03 * logits[1].abs().max()

    prompts = [[1, 2, 3, 4, 5], [200, 17, 9], [42] * 9]
    with torch.inference_mode():
        batched = greedy(model, tokenizer, prompts)
        for i, ids in enumerate(prompts):
            assert greedy(model, tokenizer, [ids])["0"] == batched[str(i)]
    assert all(tokens for tokens in batched.values()) and sum(map(len, batched.values())) > 12  # some stop early at eos


@pytest.mark.slow
def test_packaged_gguf_tensors_convert_exactly():
    from tests.model.test_gguf import packaged

    reader = gguf.GGUFReader(str(packaged("qwen2.5-coder-0.5b")))
    seen = set()
    for tensor in reader.tensors:
        if tensor.tensor_type in qf.CONVERTIBLE and tensor.tensor_type not in seen:
            seen.add(tensor.tensor_type)
            rows, format_id = qf.from_gguf(tensor.data, tensor.tensor_type, int(tensor.shape[1]))
            ours, theirs = qf.dequantize(rows, format_id), dequantize(tensor.data, tensor.tensor_type)
            assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), tensor.name
    assert seen == {GGML.Q8_0, GGML.Q5_0, GGML.Q4_K, GGML.Q6_K}


def test_prompts_run_on_the_float_copy_and_replies_on_the_kernel_whatever_their_step(tmp_path):
    """With float copies, every prompt token (and no reply token) goes through them: a prompt's
    hidden states are the float32 model's, and a request that decodes while another's prompt
    shares its steps gets the tokens it gets alone."""
    kernel_isas()
    path = tiny_quantized_gguf(tmp_path)
    model, _, tokenizer = load_gguf(path, cache_dir=tmp_path / "cache", quantized=True, prompt_dtype=torch.float32)
    copies = cache_entry(path, tmp_path / "cache") / "prompt-copies-float32.safetensors"
    assert copies.is_file()
    model, _, tokenizer = load_gguf(path, cache_dir=tmp_path / "cache", quantized=True, prompt_dtype=torch.float32)
    from safetensors.torch import load_file, save_file
    stale = load_file(copies)
    save_file(dict(list(stale.items())[1:]), str(copies))  # a cache another version wrote: made again
    model, _, tokenizer = load_gguf(path, cache_dir=tmp_path / "cache", quantized=True, prompt_dtype=torch.float32)
    assert set(load_file(copies)) == set(stale)
    plain, _, _ = load_gguf(path, quantized=True)
    reference, _, _ = load_gguf(path, dtype=torch.float32, pack_weights=False)
    ids = torch.randint(0, 260, (1, 11), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        hidden = {name: m(ids, torch.arange(11)[None], m.make_cache(1, 16), torch.tensor([0]),
                          prompt_tokens=torch.ones(1, 11, dtype=torch.bool))
                  for name, m in (("copy", model), ("kernel", plain), ("float", reference))}
    assert torch.allclose(hidden["copy"], hidden["float"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(hidden["kernel"], hidden["float"], atol=1e-5, rtol=1e-4)  # the kernel rounds activations

    rows_seen, mixed_steps = [], []
    first = model.model.layers[0].self_attn.fused_qkv
    copy = first.float_copy

    def counting_copy(rows):
        rows_seen.append(rows.shape[0])
        mixed_steps.append(isinstance(quant_linear._PROMPT_ROWS.get(), quant_linear.RowSplit))
        return copy(rows)

    first.float_copy = counting_copy
    prompts = {"a": [5, 6, 7, 8], "b": list(range(30, 52)), "c": [9] * 7}
    with torch.inference_mode():
        alone = {name: greedy(model, tokenizer, [ids])["0"] for name, ids in prompts.items()}
        assert sum(rows_seen) == sum(map(len, prompts.values()))
        rows_seen.clear()
        engine = LLMEngine(model, tokenizer, max_slots=3, context_length=64, prefill_chunk_tokens=8)
        tokens = {name: [] for name in prompts}
        for name, ids in prompts.items():  # each joins while the earlier ones decode
            engine.add_request(name, ids, SamplingParams(temperature=0, max_tokens=12, stop=()))
            for _ in range(2):
                for output in engine.step():
                    tokens[output.request_id] += output.token_ids
        while engine.has_work():
            for output in engine.step():
                tokens[output.request_id] += output.token_ids
    assert sum(rows_seen) == sum(map(len, prompts.values()))
    assert any(mixed_steps)  # some steps held prompt and reply tokens together
    assert tokens == alone
    assert all(alone.values())


def test_compiled_glue_equals_the_torch_layers():
    """The kernel module's RMSNorm and in-place rotary (on views of a fused q/k/v output, as the
    attention hands them over) equal model/layers.py's, for one row and many."""
    from omnilive.model.layers import RMSNorm, apply_rotary

    module = kernels()
    if module is None:
        pytest.skip("no kernel on this machine")
    generator = torch.Generator().manual_seed(4)
    for rows in (1, 7, 40):
        norm = RMSNorm(96, 1e-6)
        norm.weight.data = torch.randn(96, generator=generator)
        x = torch.randn(rows, 96, generator=generator) * 3
        assert torch.allclose(module.rms_norm(x, norm.weight, 1e-6), norm(x), rtol=1e-5, atol=1e-6)

        fused = torch.randn(rows, (6 + 2 + 2) * 16, generator=generator)
        q, k, v = fused.split([96, 32, 32], dim=-1)
        q, k = q.view(rows, 6, 16), k.view(rows, 2, 16)
        angles = torch.rand(rows, 16, generator=generator) * 50
        cos, sin = angles.cos(), angles.sin()
        expected_q, expected_k, untouched_v = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v.clone()
        module.rotary_(q, k, cos, sin)
        assert torch.allclose(q, expected_q, atol=1e-6) and torch.allclose(k, expected_k, atol=1e-6)
        assert torch.equal(v, untouched_v)
    with pytest.raises(RuntimeError, match="float32"):
        module.rms_norm(x.double(), norm.weight, 1e-6)

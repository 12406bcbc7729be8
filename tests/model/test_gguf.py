"""GGUF loading: a tiny GGUF written the way llama.cpp's converter writes it, then the real
packaged models (slow) and our tokenizer against transformers' GGUF tokenizer (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from omnilive.model.gguf_loader import cache_entry, hf_name, load_gguf, read_metadata
from omnilive.model.tokenizer import CONTROL, NORMAL, Tokenizer, byte_alphabet

TINY = {
    "vocab_size": 260,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
}
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's HF→GGUF converter does to llama q/k weights (HF half-split → interleaved)."""
    shape = weight.shape
    return weight.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def write_tiny_gguf(hf_model, path: Path, arch: str, qtype_of=None) -> None:
    """A float32 GGUF of `hf_model` with a 256-byte + 4-token vocabulary; `qtype_of(gguf name)`
    may give a GGMLQuantizationType to store a 2-d weight quantised (gguf's own quantize)."""
    c = hf_model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(TINY["rope_theta"])
    tokens = [byte_alphabet()[b] for b in range(256)] + ["ab", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([NORMAL] * 257 + [CONTROL] * 3)
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(259)
    writer.add_chat_template(CHATML)

    names = {hf_name(g): g for g in ("token_embd.weight", "output_norm.weight", "output.weight")}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for key, tensor in hf_model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue  # tied: llama.cpp writes no output tensor
        weight = tensor.numpy().copy()
        if key in names:
            name = names[key]
        else:
            layer, rest = key.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            name = f"blk.{layer}.{parts[module]}.{kind}"
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            weight = llama_cpp_permute(weight, c.num_attention_heads if ".attn_q." in name else c.num_key_value_heads)
        qtype = qtype_of(name) if qtype_of is not None and weight.ndim == 2 else None
        if qtype is None:
            writer.add_tensor(name, weight)
        else:
            writer.add_tensor(name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_gguf_loads_to_transformers_logits(arch, tmp_path):
    torch.manual_seed(0)
    if arch == "qwen2":
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, tie_word_embeddings=False))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY, tie_word_embeddings=True))
    hf.eval()
    path = tmp_path / f"tiny-{arch}.gguf"
    write_tiny_gguf(hf, path, arch)

    model, config, tokenizer = load_gguf(path, cache_dir=tmp_path / "cache", dtype=torch.float32)
    assert config.model_type == arch and config.tie_word_embeddings == (arch == "llama")
    assert config.attention_bias == (arch == "qwen2")
    ids = torch.randint(0, 260, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits[0]
        ours = model.compute_logits(model(ids, torch.arange(11)[None], model.make_cache(1, 16), torch.tensor([0])))[0]
    assert (ours - expected).abs().max().item() <= 1e-4

    # the second load comes from the cache and gives the same model and tokenizer
    assert (cache_entry(path, tmp_path / "cache") / "model-float32.safetensors").is_file()
    again, config_again, tokenizer_again = load_gguf(path, cache_dir=tmp_path / "cache", dtype=torch.float32)
    assert config_again == config
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    text = tokenizer.render_chat([{"role": "user", "content": "abc"}])
    assert text == "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer_again.encode(text) == tokenizer.encode(text)
    assert tokenizer.encode("ab")[0] == 256 and tokenizer.encode("<|im_end|>") == [259]
    assert tokenizer.stop_token_ids == {257, 259}


def test_hf_names():
    assert hf_name("blk.12.attn_q.bias") == "model.layers.12.self_attn.q_proj.bias"
    assert hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(KeyError, match="rope_freqs"):
        hf_name("rope_freqs.weight")


# -- the packaged models (need the pip packages; slow) --------------------------------------------


def packaged(which: str) -> Path:
    from omnilive.backends import assets

    try:
        return assets.smollm2_gguf() if which == "smollm2" else assets.qwen_coder_gguf(assets.DEFAULT_CACHE_DIR)
    except assets.MissingPackageError as e:
        pytest.skip(str(e))


def greedy_reply(model, tokenizer, question: str, max_new_tokens: int = 24) -> str:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    cache, slots, out = model.make_cache(1, len(ids) + max_new_tokens), torch.tensor([0]), []
    with torch.inference_mode():
        hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None], cache, slots)
        for position in range(len(ids), len(ids) + max_new_tokens):
            token = int(model.compute_logits(hidden[:, -1]).argmax())
            if token in tokenizer.stop_token_ids:
                break
            out.append(token)
            hidden = model(torch.tensor([[token]]), torch.tensor([[position]]), cache, slots)
    return tokenizer.decode(out)


@pytest.mark.slow
@pytest.mark.parametrize("which, weights", [("qwen2.5-coder-0.5b", "float"), ("qwen2.5-coder-0.5b", "int8"),
                                            ("qwen2.5-coder-0.5b", "gguf"), ("smollm2", "float")])
def test_packaged_model_answers(which, weights):
    from omnilive.backends import assets
    from omnilive.model.quant_linear import kernels

    if weights == "gguf" and kernels() is None:
        pytest.skip("no quantised kernel on this machine (log says why)")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    int8 = weights == "int8"
    dtype = torch.bfloat16 if int8 else None
    model, config, tokenizer = load_gguf(packaged(which), cache_dir=assets.DEFAULT_CACHE_DIR, dtype=dtype,
                                         int8_weights=int8, quantized=weights == "gguf")
    assert config.model_type == ("qwen2" if which.startswith("qwen") else "llama")
    assert "Paris" in greedy_reply(model, tokenizer, "What is the capital of France?")


TEXTS = [
    "Hello world! How are you?",
    "  leading and   multiple spaces\n\n\ttabs\r\nCRLF  trailing   ",
    "def square(x: int) -> int:\n    return x**2  # comment\n",
    "Numbers: 3.14159, 1,000,000 and 2024-11-26 12345678",
    "Unicode: café, naïve, 日本語のテキスト, emoji 🤖👍🏽, Ελληνικά, العربية",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'RE right, we'll see",
]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["qwen2.5-coder-0.5b", "smollm2"])
def test_tokenizer_equals_transformers_gguf_tokenizer(which):
    path = packaged(which)
    reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = Tokenizer.from_gguf_fields(read_metadata(gguf.GGUFReader(str(path))))
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
        assert b"".join(ours.token_bytes(i) for i in ids) == text.encode("utf-8")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"}]
    assert ours.render_chat(chat) == reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

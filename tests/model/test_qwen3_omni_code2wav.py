"""Our Qwen3-Omni Code2Wav against transformers' (tiny random checkpoint, float32): the whole
decode, and the same codes streamed chunk by chunk (any chunk sizes) equal to it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from omnilive.model.omni_checkpoint import load_prefixed_tensors
from omnilive.model.qwen3_omni_code2wav import (
    CODE2WAV_PREFIX,
    Code2WavStream,
    JoinedCode2WavStreams,
    decode_joined,
    load_qwen3_omni_code2wav,
)
from omnilive.model.weights import WeightsMismatchError
from tests.model.qwen3_omni_tiny import CODE2WAV, build_tiny_qwen3_omni

pytest.importorskip("transformers")

TOLERANCE = 1e-5
FRAMES = 23  # several times the 4-frame attention window


def random_codes(seed: int, frames: int = FRAMES, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, CODE2WAV["codebook_size"], (batch, CODE2WAV["num_quantizers"], frames),
                         generator=generator)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni_code2wav"), seed=3)


@pytest.fixture(scope="module")
def ours(tiny):
    return load_qwen3_omni_code2wav(tiny.directory)


def streamed(ours, codes: torch.Tensor, chunk_sizes: list[int]) -> torch.Tensor:
    stream, pieces, start = Code2WavStream(), [], 0
    with torch.inference_mode():
        for size in chunk_sizes:
            pieces.append(ours(codes[..., start:start + size], stream))
            start += size
    assert start == codes.shape[-1]
    return torch.cat(pieces, dim=-1)


@pytest.mark.parametrize("frames", [1, 2, FRAMES])
def test_whole_decode_matches_reference(tiny, ours, frames):
    codes = random_codes(frames, frames=frames, batch=2)
    with torch.no_grad():
        expected = tiny.model.code2wav(codes)
    with torch.inference_mode():
        got = ours(codes)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.01  # a waveform, not silence
    torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("chunk_sizes", [[1] * FRAMES, [4] * 5 + [3], [2, 7, 1, 13], [FRAMES]])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_streamed_chunks_equal_the_whole_decode(tiny, chunk_sizes, dtype, tolerance):
    """Equal in float64 (the streaming is exact); in float32 the convs' rounding differs with
    the input length and the random vocoder amplifies it to ~1e-5."""
    model = load_qwen3_omni_code2wav(tiny.directory, dtype=dtype)
    codes = random_codes(7, batch=2)
    with torch.inference_mode():
        whole = model(codes)
    got = streamed(model, codes, chunk_sizes)
    assert got.shape == whole.shape
    torch.testing.assert_close(got, whole, rtol=0, atol=tolerance)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_streams_decoded_joined_equal_each_alone(tiny, dtype, tolerance):
    """Three utterances at different frames (one within the 4-frame window, two past it, one
    just begun) decode their next chunks as one batch: each row equals its stream alone, and
    each stream goes on alone afterwards as if it had never been joined."""
    model = load_qwen3_omni_code2wav(tiny.directory, dtype=dtype)
    codes = [random_codes(20 + i) for i in range(3)]
    begun = [2, 9, 13]
    alone, joined = [Code2WavStream() for _ in codes], [Code2WavStream() for _ in codes]
    expected, got = [], []
    with torch.inference_mode():
        for c, a, j, n in zip(codes, alone, joined, begun):
            model(c[..., :n], a)
            model(c[..., :n], j)
        for start in (0, 3):  # two joined chunks of 3 frames
            parts = [c[..., n + start:n + start + 3] for c, n in zip(codes, begun)]
            expected.append([model(p, a) for p, a in zip(parts, alone)])
            got.append(decode_joined(model, parts, joined))
        expected.append([model(c[..., n + 6:], a) for c, n, a in zip(codes, begun, alone)])
        got.append([model(c[..., n + 6:], j) for c, n, j in zip(codes, begun, joined)])
    for want_chunk, got_chunk in zip(expected, got):
        for want, have in zip(want_chunk, got_chunk):
            assert want.shape == have.shape and want.shape[-1] > 0
            torch.testing.assert_close(have, want, rtol=0, atol=tolerance)


def test_new_and_begun_streams_are_not_joined(ours):
    begun = Code2WavStream()
    with torch.inference_mode():
        ours(random_codes(1, frames=2), begun)
    with pytest.raises(ValueError, match="all begun or all new"):
        JoinedCode2WavStreams([begun, Code2WavStream()])


def test_each_chunk_gives_its_frames_samples_after_the_first(ours):
    """Every chunk's audio is out once its codes are: all but the decoder's one-input lag."""
    codes, stream, upsample = random_codes(8), Code2WavStream(), ours.config.total_upsample
    with torch.inference_mode():
        first = ours(codes[..., :4], stream)
        second = ours(codes[..., 4:8], stream)
    lag = 4 * upsample - first.shape[-1]
    assert 0 < lag < upsample
    assert second.shape[-1] == 4 * upsample


def test_every_code2wav_key_is_consumed(tiny, tmp_path):
    tensors = load_prefixed_tensors(tiny.directory, CODE2WAV_PREFIX)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny.directory / "config.json").read_text())
    tensors = {CODE2WAV_PREFIX + k: v for k, v in tensors.items() if k != "decoder.1.block.1.conv.bias"}
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match="decoder.1.block.1.conv.bias"):
        load_qwen3_omni_code2wav(broken)

"""Streaming token2wav against the whole-utterance Token2Wav (itself equal to transformers'
reference, see test_token2wav.py), on a tiny random config (float32 unless stated)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.token2wav_config import Token2WavConfig
from omnilive.model.token2wav_stream import (
    StreamingSchedule,
    StreamingToken2Wav,
    StreamingVocoder,
    autocast_to,
    ode_evaluations,
    solve_windows,
    vocoder_receptive_field,
)

TINY_DIT = {
    "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "head_dim": 16, "ff_mult": 2, "emb_dim": 16,
    "block_size": 4, "look_ahead_layers": [1], "look_backward_layers": [0, 3], "repeats": 2, "num_embeds": 20, "mel_dim": 8,
    "enc_emb_dim": 12, "enc_dim": 8, "enc_channels": [8, 8, 8, 8, 24], "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 8, "enc_res2net_scale": 2, "enc_se_channels": 4,
    "max_position_embeddings": 256,
}
TINY_BIGVGAN = {
    "mel_dim": 8, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]], "upsample_rates": [5, 3, 2], "upsample_kernel_sizes": [11, 7, 4],
}
NUM_CODES = 37  # 74 mel frames = 18.5 blocks of 4: the last block is partial
HOP = 30


@pytest.fixture(scope="module")
def model() -> Token2Wav:
    torch.manual_seed(0)
    model = Token2Wav(Token2WavConfig.from_dict({"dit_config": TINY_DIT, "bigvgan_config": TINY_BIGVGAN})).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # well-scaled values everywhere (as in test_token2wav.py)
        for name, p in model.named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.8 / p[0].numel() ** 0.5)
    return model


@pytest.fixture(scope="module")
def voice() -> Voice:
    generator = torch.Generator().manual_seed(2)
    return Voice(speaker_embedding=torch.randn(1, TINY_DIT["enc_emb_dim"], generator=generator),
                 reference_mel=torch.randn(1, 30, TINY_DIT["mel_dim"], generator=generator) - 5.0)


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    return torch.randint(1, TINY_DIT["num_embeds"], (1, NUM_CODES), generator=torch.Generator().manual_seed(3))


def stream_one_code_at_a_time(stream: StreamingToken2Wav, codes: torch.Tensor) -> tuple[torch.Tensor, int | None, int]:
    """→ (whole streamed waveform, codes pushed when the first chunk came out, chunk count)."""
    chunks, first_chunk_after = [], None
    for i in range(codes.shape[1]):
        new = stream.push(codes[:, i:i + 1])
        if new and first_chunk_after is None:
            first_chunk_after = i + 1
        chunks += new
    chunks += stream.finish()
    return torch.cat(chunks), first_chunk_after, len(chunks)


def test_vocoder_receptive_field_bounds_the_real_dependence(model):
    bigvgan = model.code2wav_bigvgan_model
    mel = (torch.randn(1, 8, 120, generator=torch.Generator().manual_seed(4)) * 2 - 6).requires_grad_()
    bigvgan(mel)[0, 60 * HOP:61 * HOP].sum().backward()  # every sample of frame 60
    depends_on = (mel.grad[0].abs().sum(0) > 0).nonzero().flatten()
    reach = max(60 - depends_on.min().item(), depends_on.max().item() - 60)
    bound = vocoder_receptive_field(bigvgan.config)
    assert reach <= bound <= reach + 5  # sufficient, and not wastefully loose


@pytest.mark.parametrize("piece", [1, 5, 17])
def test_streaming_vocoder_splices_exactly(model, piece):
    mel = torch.randn(1, 8, 61, generator=torch.Generator().manual_seed(5)) * 2 - 6
    vocoder = StreamingVocoder(model.code2wav_bigvgan_model)
    outputs = [vocoder.push(mel[..., i:i + piece], last=i + piece >= 61) for i in range(0, 61, piece)]
    assert outputs[0].numel() == 0 or piece > vocoder.context  # nothing before its right context exists
    torch.testing.assert_close(torch.cat(outputs), model.vocode(mel)[0], rtol=0, atol=1e-5)


def test_dit_window_with_first_frame_equals_whole_forward(model, voice, codes):
    """One forward: a block-aligned window reproduces the whole-utterance velocity wherever the
    window holds the block's whole receptive field (2 blocks back, 1 ahead here)."""
    dit, block = model.code2wav_dit_model, TINY_DIT["block_size"]
    conditioning = dit.conditioning(codes, voice.speaker_embedding, voice.reference_mel, with_unconditional=True)
    x = torch.randn(2, NUM_CODES * 2, 8, generator=torch.Generator().manual_seed(6))
    time = torch.tensor(0.3)
    start, end = 4 * block, 12 * block
    with torch.no_grad():
        whole = dit(x, time, conditioning)
        window = dit(x[:, start:end], time, conditioning[:, start:end], first_frame=start)
    inside = slice(2 * block, (12 - 4 - 1) * block)  # window blocks 6..10
    torch.testing.assert_close(window[:, inside], whole[:, start:end][:, inside], rtol=0, atol=1e-5)
    assert (window[:, -block:] - whole[:, end - block:end]).abs().max() > 1e-4  # its look-ahead was cut


def test_dit_rows_with_their_own_first_frames_equal_each_row_alone(model, voice, codes):
    """Batched streams: each row a window at its own offset (RoPE angles, block mask)."""
    dit, block = model.code2wav_dit_model, TINY_DIT["block_size"]
    conditioning = dit.conditioning(codes, voice.speaker_embedding, voice.reference_mel, with_unconditional=True)
    x = torch.randn(2, NUM_CODES * 2, 8, generator=torch.Generator().manual_seed(7))
    starts, length, time = [0, 3 * block, 5 * block + 2], 6 * block, torch.tensor(0.6)
    rows = [(x[r % 2, s:s + length], conditioning[r % 2, s:s + length]) for r, s in enumerate(starts)]
    with torch.no_grad():
        together = dit(torch.stack([xr for xr, _ in rows]), time, torch.stack([cr for _, cr in rows]),
                       first_frame=torch.tensor(starts))
        alone = [dit(xr[None], time, cr[None], first_frame=s)[0] for (xr, cr), s in zip(rows, starts)]
    torch.testing.assert_close(together, torch.stack(alone), rtol=0, atol=1e-5)
    assert (alone[1] - alone[2]).abs().max() > 1e-3  # the offsets matter


def test_windows_of_several_streams_solved_together_equal_each_solved_alone(model, voice, codes):
    other_voice = Voice(speaker_embedding=voice.speaker_embedding.flip(-1), reference_mel=voice.reference_mel + 1.0)
    def streams():
        return [StreamingToken2Wav(model, v, num_steps=3, generator=torch.Generator().manual_seed(seed))
                for v, seed in ((voice, 10), (other_voice, 11), (voice, 12))]
    lengths = (NUM_CODES, NUM_CODES - 7, NUM_CODES)  # the second stream lags: other windows, other offsets
    pushes = [codes[:, :n] for n in lengths]

    alone = []
    for stream, pushed in zip(streams(), pushes):
        alone.append(torch.cat(stream.push(pushed) + stream.finish()))

    together, waves = streams(), [[] for _ in lengths]
    for stream, pushed in zip(together, pushes):
        stream.add_codes(pushed)
    due = [window for stream in together for window in stream.due_windows()]
    assert len({window.batch_key for window in due}) < len(due)  # some windows share a batch
    assert len({window.start for window in due if window.batch_key == due[-1].batch_key}) > 1
    for window, mel in zip(due, solve_windows(due)):
        waves[together.index(window.stream)].append(window.stream.complete(window, mel))
    for i, stream in enumerate(together):
        waves[i] += stream.finish()
        torch.testing.assert_close(torch.cat(waves[i]), alone[i], rtol=0, atol=1e-5)


def test_frame_conditioning_equals_dit_conditioning(model, voice, codes):
    stream = StreamingToken2Wav(model, voice)
    expected = model.code2wav_dit_model.conditioning(codes, voice.speaker_embedding, voice.reference_mel,
                                                     with_unconditional=True)
    torch.testing.assert_close(stream.frame_conditioning(codes[:, 5:17]), expected[:, 10:34], rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_steps, chunk_blocks", [(2, 1), (2, 2), (2, 3), (3, 2)])
def test_exact_schedule_equals_whole_utterance(model, voice, codes, num_steps, chunk_blocks):
    schedule = StreamingSchedule.exact(model.config.dit_config, num_steps, chunk_blocks)
    assert (schedule.past_blocks, schedule.future_blocks) == (2 * ode_evaluations(num_steps), ode_evaluations(num_steps))
    stream = StreamingToken2Wav(model, voice, num_steps=num_steps, schedule=schedule,
                                generator=torch.Generator().manual_seed(7))
    streamed, first_chunk_after, num_chunks = stream_one_code_at_a_time(stream, codes)

    whole = model.synthesize(codes, voice, num_steps=num_steps, initial_noise=stream.initial_noise)
    assert streamed.shape == (NUM_CODES * 2 * HOP,)
    torch.testing.assert_close(streamed, whole[0], rtol=0, atol=1e-4)

    # The first waveform needs the first chunk that ends past the vocoder's right context,
    # plus that chunk's DiT look-ahead: no more codes than that, and long before the last one.
    block, context = TINY_DIT["block_size"], vocoder_receptive_field(model.config.bigvgan_config)
    chunk_frames = chunk_blocks * block
    first_final_end = (context // chunk_frames + 1) * chunk_frames
    needed_codes = (first_final_end + schedule.future_blocks * block) // TINY_DIT["repeats"]
    assert first_chunk_after == needed_codes < NUM_CODES
    assert num_chunks >= 3


def test_uneven_pushes_and_given_noise(model, voice, codes):
    noise = torch.randn(1, 100, 8, generator=torch.Generator().manual_seed(8))  # longer than needed
    stream = StreamingToken2Wav(model, voice, num_steps=2, schedule=StreamingSchedule.exact(model.config.dit_config, 2),
                                initial_noise=noise)
    chunks = []
    for start, stop in [(0, 5), (5, 16), (16, 16), (16, 30), (30, NUM_CODES)]:
        chunks += stream.push(codes[0, start:stop].tolist())
    chunks += stream.finish()
    whole = model.synthesize(codes, voice, num_steps=2, initial_noise=noise[:, :NUM_CODES * 2])
    torch.testing.assert_close(torch.cat(chunks), whole[0], rtol=0, atol=1e-4)
    with pytest.raises(RuntimeError):
        stream.push([1])
    short = StreamingToken2Wav(model, voice, num_steps=2, initial_noise=noise[:, :10])
    with pytest.raises(ValueError, match="initial_noise covers 10 frames"):
        short.push(codes)
    assert StreamingToken2Wav(model, voice).finish() == []


def test_no_look_ahead_chunk_ending_with_the_codes_is_flushed_by_finish(model, voice, codes):
    """Without future blocks a chunk is solved as soon as its codes exist; when the reply ends on
    a chunk boundary, finish() has no chunk left to solve but must still release the vocoder's tail."""
    stream = StreamingToken2Wav(model, voice, num_steps=2, schedule=StreamingSchedule(2, 4, 0),
                                generator=torch.Generator().manual_seed(11))
    streamed_codes = codes[:, :32]  # 64 frames = 8 chunks of 2 blocks
    pushed = stream.push(streamed_codes)
    tail = stream.finish()
    assert len(tail) == 1 and tail[0].numel() == vocoder_receptive_field(model.config.bigvgan_config) * HOP
    assert torch.cat(pushed + tail).shape == (64 * HOP,)


def test_bounded_look_ahead_error_shrinks_with_context(model, voice, codes):
    """At 10 steps the exact context is the whole reply; Qwen's bounded schedule (3 blocks per
    chunk, 2 past, 1 future) differs from the whole solve, less with more context."""
    noise = torch.randn(1, NUM_CODES * 2, 8, generator=torch.Generator().manual_seed(9))
    whole = model.synthesize(codes, voice, num_steps=10, initial_noise=noise)[0]
    errors = []
    for past, future in [(2, 1), (4, 2), (8, 4)]:
        stream = StreamingToken2Wav(model, voice, num_steps=10, schedule=StreamingSchedule(3, past, future),
                                    initial_noise=noise)
        streamed, first_chunk_after, _ = stream_one_code_at_a_time(stream, codes)
        assert first_chunk_after < NUM_CODES
        errors.append((streamed - whole).abs().max().item())
    # tiny random model: (2, 1) differs ~1e-4; (4, 2) already reaches float32 rounding (~3e-6), where
    # (8, 4) stays; which of the two is smaller there depends on the thread count's summation order
    assert 0 < errors[0] < 1e-3 and errors[1] < errors[0] / 10 and errors[2] < errors[0] / 10


def test_bfloat16_and_fewer_steps_stay_close(model, voice, codes):
    noise = torch.randn(1, NUM_CODES * 2, 8, generator=torch.Generator().manual_seed(10))
    reference = model.dit_mel(codes, voice, num_steps=10, initial_noise=noise)
    scale = reference.abs().mean()
    with autocast_to(torch.bfloat16, reference.device):
        bf16 = model.dit_mel(codes, voice, num_steps=10, initial_noise=noise)
    assert bf16.dtype == torch.float32 and 0 < (bf16 - reference).abs().mean() < 0.01 * scale
    distances = [(model.dit_mel(codes, voice, num_steps=steps, initial_noise=noise) - reference).abs().mean()
                 for steps in (2, 4, 8)]
    assert distances[0] > distances[1] > distances[2] > 0

    stream = StreamingToken2Wav(model, voice, num_steps=4, initial_noise=noise, compute_dtype=torch.bfloat16)
    streamed, _, _ = stream_one_code_at_a_time(stream, codes)
    float32 = model.synthesize(codes, voice, num_steps=4, initial_noise=noise)[0]
    assert streamed.dtype == torch.float32 and (streamed - float32).abs().mean() < 0.1 * float32.abs().mean()


def test_guidance_pair_is_one_forward_per_evaluation(model, voice, codes):
    batches = []
    hook = model.code2wav_dit_model.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        model.dit_mel(codes, voice, num_steps=10)
        stream = StreamingToken2Wav(model, voice, num_steps=10, schedule=StreamingSchedule(20, 0, 0))
        stream.push(codes)
        stream.finish()  # one 20-block chunk covers the utterance: one solve
    finally:
        hook.remove()
    assert batches == [2] * (2 * ode_evaluations(10))  # conditional + unconditional rows together


def test_fewer_steps_for_the_first_chunk_change_only_its_own_audio(model, voice, codes):
    """The first window solved with 2 of 4 steps: its audio moves a little; from the next
    window on (which re-solves those frames as past context with 4 steps) the mel is the
    default stream's, so past the vocoder's reach of the first chunk the waveform is too."""
    noise = torch.randn(1, NUM_CODES * 2, 8, generator=torch.Generator().manual_seed(11))
    schedule = StreamingSchedule(chunk_blocks=3, past_blocks=2, future_blocks=1)
    default, _, _ = stream_one_code_at_a_time(
        StreamingToken2Wav(model, voice, num_steps=4, schedule=schedule, initial_noise=noise), codes)
    quick, _, _ = stream_one_code_at_a_time(
        StreamingToken2Wav(model, voice, num_steps=4, schedule=schedule, initial_noise=noise, first_chunk_steps=2),
        codes)
    first_chunk_end = 3 * TINY_DIT["block_size"]  # mel frames
    untouched = (first_chunk_end + vocoder_receptive_field(model.config.bigvgan_config)) * HOP
    assert default.shape == quick.shape and untouched < default.numel()
    torch.testing.assert_close(quick[untouched:], default[untouched:], rtol=0, atol=1e-5)
    moved = (quick[:untouched] - default[:untouched]).abs().mean()
    assert 0 < moved < 0.1 * default[:untouched].abs().mean()
    same = StreamingToken2Wav(model, voice, num_steps=4, schedule=schedule, initial_noise=noise, first_chunk_steps=9)
    torch.testing.assert_close(stream_one_code_at_a_time(same, codes)[0], default, rtol=0, atol=0)  # never more steps

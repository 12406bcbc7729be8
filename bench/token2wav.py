"""token2wav at the real Qwen2.5-Omni size (random weights: timing only), whole vs streaming.

Prints, never asserts. A full whole-utterance solve at real size takes minutes on 2 cores, so
the ODE is timed by its parts: one DiT forward (the guidance pair batched) at each window length
the schedule uses, times the forwards per solve (4·(steps-1) for RK4), plus the BigVGAN calls.
A real StreamingToken2Wav run then measures the time to the first chunk directly, to check the
estimate. Also: bfloat16 (autocast) speed and its distance to float32, and the guidance pair
batched vs two forwards.

    python bench/token2wav.py [--codes 300] [--threads 2] [--layers 22]

--layers < 22 builds a shallower DiT and scales its forward time by 22/layers (said in the output).
"""

from __future__ import annotations

import argparse
import time

import torch

from omnilive.model.bigvgan import BigVGAN
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.token2wav_config import DiTConfig, Token2WavConfig
from omnilive.model.token2wav_stream import (
    StreamingSchedule,
    StreamingToken2Wav,
    StreamingVocoder,
    autocast_to,
    ode_evaluations,
)

REAL_LAYERS = DiTConfig().num_hidden_layers
CPU = torch.device("cpu")


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Best wall time of `repeats` calls (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def build(layers: int) -> tuple[Token2Wav, Voice]:
    dit = DiTConfig(num_hidden_layers=layers,
                    look_ahead_layers=tuple(i for i in DiTConfig().look_ahead_layers if i < layers),
                    look_backward_layers=tuple(i for i in DiTConfig().look_backward_layers if i < layers))
    model = Token2Wav(Token2WavConfig(dit_config=dit)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adaLN and Snake start at zero in the reference init: give them values
        for name, p in model.named_parameters():
            if name.endswith((".alpha", ".beta")) or p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    voice = Voice(speaker_embedding=torch.randn(1, dit.enc_emb_dim, generator=generator),
                  reference_mel=torch.randn(1, 300, dit.mel_dim, generator=generator) - 5.0)
    return model, voice


def vocoder_calls(schedule: StreamingSchedule, frames: int, block_size: int, bigvgan: BigVGAN) -> list[int]:
    """Mel frames of each BigVGAN call the streaming vocoder makes for an utterance of `frames`."""
    lengths = []

    class CountingVocoder:  # the real splicing logic, a stand-in for the network itself
        config = bigvgan.config

        def __call__(self, mel: torch.Tensor) -> torch.Tensor:
            lengths.append(mel.shape[-1])
            return mel.new_zeros(1, mel.shape[-1] * self.config.hop_length)

    vocoder = StreamingVocoder(CountingVocoder())  # type: ignore[arg-type]
    chunk = 0
    while (window := schedule.window(chunk, block_size, frames))[1] < frames:
        vocoder.push(torch.zeros(1, 1, window[2] - window[1]), last=window[2] == frames)
        chunk += 1
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=300, help="codec tokens (50 Hz): 300 = 6 s of speech")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=REAL_LAYERS)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    scale = REAL_LAYERS / args.layers

    started = time.perf_counter()
    model, voice = build(args.layers)
    config = model.config.dit_config
    frames, block = args.codes * config.repeats, config.block_size
    schedule = StreamingSchedule()  # Qwen's streaming values: 3-block chunks, 2 past, 1 future
    windows = []
    while (window := schedule.window(len(windows), block, frames))[1] < frames:
        windows.append(window)
    print(f"token2wav real size, random weights, {args.threads} threads, {args.codes} codes = {frames} mel frames "
          f"= {frames / 100:.1f} s; DiT {args.layers} layers" + (f" (times scaled x{scale:.2f} to 22)" if scale != 1
                                                                    else "") + f"; schedule {schedule}")

    # One DiT forward per distinct window length, the guidance pair batched as the sampler runs it.
    stream = StreamingToken2Wav(model, voice)
    codes = torch.randint(1, config.num_embeds, (1, args.codes))
    conditioning = stream.frame_conditioning(codes)
    dit = model.code2wav_dit_model
    lengths = sorted({end - start for start, _, _, end in windows} | {frames})

    noisy_mel = torch.randn(2, frames, config.mel_dim)

    def forward_seconds(length: int, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
        # best of 2 in one autocast region, as in a solve (bf16 weights cast once, kernels warm)
        with torch.no_grad(), autocast_to(dtype, CPU):
            seconds, out = timed(lambda: dit(noisy_mel[:, :length], torch.tensor(0.4), conditioning[:, :length]).float(),
                                 repeats=2)
        return seconds * scale, out

    forward_seconds(48, torch.float32)  # warm-up
    forward, whole_velocity = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        for length in lengths:
            forward[dtype, length], velocity = forward_seconds(length, dtype)
        whole_velocity[dtype] = velocity  # lengths are sorted: the last one is the whole utterance
        print(f"DiT forward ({dtype}), per window length: "
              + ", ".join(f"{n} frames {forward[dtype, n]:.2f} s" for n in lengths))
    difference = ((whole_velocity[torch.bfloat16] - whole_velocity[torch.float32]).abs().mean()
                  / whole_velocity[torch.float32].abs().mean())
    print(f"bf16 vs fp32 velocity, one forward over {frames} frames: relative L1 {difference:.4f}")

    steady = max(end - start for start, _, _, end in windows)
    x = noisy_mel[:1, :steady]
    with torch.no_grad():
        pair, _ = timed(lambda: (dit(x, torch.tensor(0.4), conditioning[:1, :steady]),
                                 dit(x, torch.tensor(0.4), conditioning[1:, :steady])), repeats=2)
    print(f"guidance pair at {steady} frames: two batch-1 forwards {pair * scale:.2f} s vs one batch-2 "
          f"{forward[torch.float32, steady]:.2f} s (Token2Wav.dit_mel and streaming both batch it)")

    # BigVGAN: seconds per mel frame at the streaming call size, and the whole utterance once.
    # The sampler tables below keep it float32: bf16 convolutions are slower on this CPU.
    bigvgan = model.code2wav_bigvgan_model
    calls = vocoder_calls(schedule, frames, block, bigvgan)
    mel = torch.randn(1, config.mel_dim, frames) - 5.0
    vocoder = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), autocast_to(dtype, CPU):
            seconds, wave = timed(lambda: bigvgan(mel[..., :max(calls)]).float(), repeats=2)
        vocoder[dtype] = seconds / max(calls)
        if dtype == torch.float32:
            reference_wave = wave
    bf16_wave_error = (wave - reference_wave).abs().mean() / reference_wave.abs().mean()
    whole_vocoder, _ = timed(lambda: model.vocode(mel))
    print(f"BigVGAN: {max(calls)} frames fp32 {vocoder[torch.float32] * max(calls):.2f} s, "
          f"bf16 {vocoder[torch.bfloat16] * max(calls):.2f} s (relative L1 {bf16_wave_error:.4f}); whole "
          f"{frames} frames fp32 {whole_vocoder:.2f} s; streaming calls {calls} = {sum(calls)} frames")

    print(f"\n{'steps':>5} {'DiT dtype':>9} | {'whole: first audio = total':>26} | {'streaming: first audio':>22} "
          f"{'total':>8}   (estimated: forwards x time per forward + BigVGAN fp32 frames x time per frame)")
    for steps in (10, 6, 4):
        evaluations = ode_evaluations(steps)
        for dtype in (torch.float32, torch.bfloat16):
            whole_dit = evaluations * forward[dtype, frames]
            whole = whole_dit + whole_vocoder
            first_dit = evaluations * forward[dtype, windows[0][3] - windows[0][0]]
            first = first_dit + vocoder[torch.float32] * calls[0]
            total = sum(evaluations * forward[dtype, end - start] for start, _, _, end in windows)
            total += vocoder[torch.float32] * sum(calls)
            print(f"{steps:>5} {str(dtype)[6:]:>9} | {whole:>24.1f} s | {first:>20.1f} s {total:>6.1f} s")

    # Measured directly: codes for the first chunk pushed at once, time until its waveform.
    needed = windows[0][3] // config.repeats
    note = " (DiT not scaled: shallower model)" if scale != 1 else ""
    print()
    for steps, dtype in ((4, torch.float32), (10, torch.bfloat16), (4, torch.bfloat16)):
        stream = StreamingToken2Wav(model, voice, num_steps=steps, compute_dtype=dtype)
        seconds, chunks = timed(lambda stream=stream: stream.push(codes[:, :needed]))
        audio = sum(chunk.numel() for chunk in chunks) / model.sample_rate
        print(f"measured: StreamingToken2Wav({steps} steps, {str(dtype)[6:]}).push(first {needed} codes) → "
              f"{len(chunks)} chunk, {audio:.2f} s of audio, in {seconds:.1f} s{note}")
    print(f"bench wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

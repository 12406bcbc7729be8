"""Quality and speed of the streamed-speech options: log-mel distance to the reference, first chunk time.

Prints, never asserts. One token2wav at real width (DiT 1024 wide, --layers of its 22; real
BigVGAN), random weights, random codes. Every variant voices the same codes from the same
initial noise; the reference is the whole-utterance 10-step float32 solve. Distance: mean
|log-mel(variant) - log-mel(reference)| over the utterance (and over the first chunk's audio
alone, where the first-chunk options act), 24 kHz, 1024-point STFT, hop 256, 80 mel bands,
natural log floored at 1e-5. The noise floor is the same reference solve from another noise
draw (another seed): two equally good renderings of the same codes differ by that much.

    python bench/speech_quality.py [--codes 150] [--layers 4] [--threads 2]

Random weights make the absolute numbers a stress test rather than a listening test: compare
each variant's distance with the floor, not with zero.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/token2wav.py's builder

from token2wav import build  # noqa: E402

from omnilive.engine.speech import SPEECH_SCHEDULE  # noqa: E402
from omnilive.model.token2wav_stream import StreamingToken2Wav  # noqa: E402

SAMPLE_RATE, N_FFT, HOP, MELS = 24_000, 1024, 256, 80


def mel_matrix() -> torch.Tensor:
    """[N_FFT/2 + 1, MELS] HTK-scaled triangles over 0–12 kHz."""
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    edges_mel = np.linspace(0, to_mel(SAMPLE_RATE / 2), MELS + 2)
    edges = 700 * (10 ** (edges_mel / 2595) - 1)
    freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    rising = (freqs[:, None] - edges[None, :-2]) / np.diff(edges)[:-1]
    falling = (edges[None, 2:] - freqs[:, None]) / np.diff(edges)[1:]
    return torch.from_numpy(np.maximum(0, np.minimum(rising, falling))).float()


MEL = mel_matrix()


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """waveform [samples] → [MELS, frames] natural-log mel power."""
    spectrum = torch.stft(wave.float(), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    return torch.clamp(MEL.T @ spectrum.abs() ** 2, min=1e-5).log()


def mel_distance(a: torch.Tensor, b: torch.Tensor, samples: int | None = None) -> float:
    """Mean abs log-mel difference over the first `samples` (all when None)."""
    n = min(a.numel(), b.numel()) if samples is None else samples
    return float((log_mel(a[:n]) - log_mel(b[:n])).abs().mean())


def streamed(model, voice, codes, noise, first_needed: int, **options) -> tuple[torch.Tensor, float, float, int]:
    """(waveform, seconds to the first chunk, seconds in all, samples of the first chunk)."""
    stream = StreamingToken2Wav(model, voice, schedule=SPEECH_SCHEDULE, initial_noise=noise, **options)
    start = time.perf_counter()
    chunks = stream.push(codes[:, :first_needed])
    first_seconds = time.perf_counter() - start
    first_samples = sum(chunk.numel() for chunk in chunks)
    chunks += stream.push(codes[:, first_needed:]) + stream.finish()
    return torch.cat(chunks), first_seconds, time.perf_counter() - start, first_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=150, help="codec tokens (50 Hz): 150 = 3 s of speech")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, voice = build(args.layers)
    config = model.config.dit_config
    codes = torch.randint(1, config.num_embeds, (1, args.codes))
    frames = args.codes * config.repeats
    noise = torch.randn(1, frames, config.mel_dim, generator=torch.Generator().manual_seed(0))
    other_noise = torch.randn(1, frames, config.mel_dim, generator=torch.Generator().manual_seed(1))
    first_needed = SPEECH_SCHEDULE.window(0, config.block_size)[3] // config.repeats
    print(f"token2wav: DiT 1024 x {args.layers} layers, real BigVGAN, random weights; {args.codes} codes = "
          f"{frames / 100:.1f} s; {args.threads} threads; schedule {SPEECH_SCHEDULE}; first chunk after "
          f"{first_needed} codes")

    streamed(model, voice, codes[:, :first_needed], noise, first_needed, num_steps=2)  # warm-up: one-off costs
    start = time.perf_counter()
    reference = model.synthesize(codes, voice, num_steps=10, initial_noise=noise)[0]
    whole_seconds = time.perf_counter() - start
    floor = model.synthesize(codes, voice, num_steps=10, initial_noise=other_noise)[0]

    variants = {
        "stream 10 steps fp32 (default)": {},
        "stream, first chunk 6 steps": {"first_chunk_steps": 6},
        "stream, first chunk 4 steps": {"first_chunk_steps": 4},
        "stream, bf16 DiT": {"compute_dtype": torch.bfloat16},
        "stream, bf16 DiT, first chunk 4": {"compute_dtype": torch.bfloat16, "first_chunk_steps": 4},
        "stream, all chunks 4 steps": {"num_steps": 4},
    }
    rows = []
    first_samples = None
    for name, options in variants.items():
        wave, first_s, total_s, first_n = streamed(model, voice, codes, noise, first_needed, **options)
        first_samples = first_samples or first_n
        rows.append((name, mel_distance(wave, reference), mel_distance(wave, reference, first_samples), first_s,
                     total_s))
    print(f"\n{'variant':<34} {'log-mel L1':>10} {'first chunk':>11} {'first audio':>11} {'total':>7}")
    print(f"{'whole 10 steps fp32 (reference)':<34} {0:>10.4f} {0:>11.4f} {whole_seconds:>10.2f}s "
          f"{whole_seconds:>6.2f}s")
    print(f"{'whole 10 steps, other noise (floor)':<34} {mel_distance(floor, reference):>10.4f} "
          f"{mel_distance(floor, reference, first_samples):>11.4f} {'':>11} {'':>7}")
    for name, distance, first_distance, first_s, total_s in rows:
        print(f"{name:<34} {distance:>10.4f} {first_distance:>11.4f} {first_s:>10.2f}s {total_s:>6.2f}s")
    print(f"(first chunk = its first {first_samples} samples = {first_samples / SAMPLE_RATE:.2f} s; "
          f"mean |log-mel| of the reference {float(log_mel(reference).abs().mean()):.2f})")


if __name__ == "__main__":
    main()

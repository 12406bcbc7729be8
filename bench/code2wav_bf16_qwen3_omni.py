"""Qwen3-Omni Code2Wav in bf16 vs float32 (OMNILIVE_SPEECH_DTYPE): decode time and what it costs.

Prints, never asserts. The real Code2Wav's shapes (bench/ttfa_qwen3_omni.py's random-weight
checkpoint), loaded in float32 and cast to bf16. For each chunk size: streamed decode seconds
per second of audio in each dtype (runs interleaved, best of --rounds), and the bf16 audio
against the float32 audio of the same codes: SNR (dB) and the largest sample difference, plus
bench/speech_quality.py's log-mel distance (mean |ln mel difference|, 80 bands, the score of
Qwen2.5-Omni's speech settings). Random weights: the vocoder's output is noise-like, so this
bounds rounding's cost rather than rating a voice.

    python bench/code2wav_bf16_qwen3_omni.py [--frames 32] [--chunk-sizes 2 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ttfa_qwen3_omni.py

from omnilive.model.qwen3_omni_code2wav import Code2WavStream, load_qwen3_omni_code2wav
from speech_quality import mel_distance
from ttfa_qwen3_omni import CODEBOOK, SAMPLE_RATE, build_checkpoint


def streamed(code2wav, codes: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    stream, pieces, start = Code2WavStream(), [], time.perf_counter()
    with torch.inference_mode():
        for at in range(0, codes.shape[-1], size):
            pieces.append(code2wav(codes[..., at:at + size], stream))
    return torch.cat(pieces, dim=-1).float().flatten(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp), argparse.Namespace(thinker_layers=1, talker_layers=1, predictor_layers=1,
                                                       experts=2))
        models = {"float32": load_qwen3_omni_code2wav(tmp, torch.float32)}
    models["bfloat16"] = copy.deepcopy(models["float32"]).to(torch.bfloat16)
    codes = torch.randint(0, CODEBOOK, (1, 16, args.frames), generator=torch.Generator().manual_seed(0))
    audio_s = args.frames * 1920 / SAMPLE_RATE
    print(f"Code2Wav (real shapes, random weights), {args.frames} frames = {audio_s:.2f} s, {args.threads} threads")
    print(f"{'chunk':>5} {'f32 s/s':>8} {'bf16 s/s':>9} {'bf16/f32':>9} {'SNR dB':>7} {'max |diff|':>10} "
          f"{'log-mel':>8}")
    for size in args.chunk_sizes:
        best, wavs = {"float32": float("inf"), "bfloat16": float("inf")}, {}
        for _ in range(args.rounds):
            for name, model in models.items():
                wavs[name], seconds = streamed(model, codes, size)
                best[name] = min(best[name], seconds)
        reference, other = wavs["float32"], wavs["bfloat16"]
        snr = 10 * torch.log10(reference.pow(2).sum() / (reference - other).pow(2).sum().clamp(min=1e-20))
        print(f"{size:>5} {best['float32'] / audio_s:>8.3f} {best['bfloat16'] / audio_s:>9.3f} "
              f"{best['bfloat16'] / best['float32']:>9.2f} {float(snr):>7.1f} "
              f"{float((reference - other).abs().max()):>10.2e} {mel_distance(reference, other):>8.3f}",
              flush=True)


if __name__ == "__main__":
    main()

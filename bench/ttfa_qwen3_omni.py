"""Time to first audio: omnilive's streaming Qwen3-Omni vs transformers' generate (audio at the end).

Prints, never asserts. Both run the same random-weight checkpoint (built here with transformers'
own classes, float32), the same prompt and limits, greedy everywhere (so both produce the same
text and codes). transformers returns the waveform only once thinker, talker and Code2Wav have
all finished: its time to audio is its total time. omnilive speaks while the thinker writes and
sends each Code2Wav chunk as it is decoded.

Sizes (random weights: timing only; the tokenizer and vocabulary are the test checkpoint's):
  thinker        Qwen3-Omni-30B-A3B's layer width (hidden 2048, 32 heads of 128, 4 kv, experts of
                 768, 8 per token) with --experts experts and --thinker-layers layers
  talker         hidden 1024, 16 heads of 128, 2 kv, experts of 384 (6 per token) + a shared
                 expert of 768, codec vocabulary 3072, --talker-layers layers
  code predictor hidden 1024, 16 heads, 8 kv, MLP 3072, --predictor-layers layers (5 real), 16 codebooks
  Code2Wav       the real one: 8 layers of 1024 (window 72), decoder 1536, 1920 samples a frame
The thinker's stop rows and the talker's EOS row of their heads are zeroed, so replies run to
the limits.

    python bench/ttfa_qwen3_omni.py [--text-tokens 24] [--frames 40] [--threads 2] [--levels 1 4 8]

Then (--levels) N requests at once through the engine's batched step loop: TTFA p50/p95 and
codec frames per second. Last, the Code2Wav chunk size: streamed decode time per second of
audio and its largest difference from the whole decode (the stream is exact: no quality cost),
and max(--levels) streams' chunks decoded each alone vs joined in one batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.model

from omnilive.backends.native_media_keys import MediaEncoderCache, prepare_prompt
from omnilive.backends.native_omni import load_omni
from omnilive.engine.async_engine import as_engine_outputs
from omnilive.engine.llm_engine import LLMEngine
from omnilive.engine.qwen3_speech import Qwen3SpeechModel, Qwen3SpeechSettings
from omnilive.engine.qwen3_talker_generate import QWEN3_PREDICTOR_GREEDY, QWEN3_TALKER_GREEDY
from omnilive.model.qwen3_omni_code2wav import Code2WavStream, decode_joined
from omnilive.types import AudioChunk, Message, SamplingParams, TextDelta
from tests.model import qwen3_omni_tiny as tiny

PROMPT = (Message("user", ("Tell me a long story about the sea, the wind and a small boat.",)),)
CODEBOOK, CODEC_VOCAB, CODEC_EOS = 2048, 3072, 2150
SAMPLE_RATE = 24_000


def build_checkpoint(directory: Path, args) -> torch.nn.Module:
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [24, 20, 20], "interleaved": True,
            "mrope_interleaved": True}
    text = {**tiny.TEXT, "hidden_size": 2048, "intermediate_size": 768, "num_hidden_layers": args.thinker_layers,
            "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": args.experts,
            "num_experts_per_tok": 8, "moe_intermediate_size": 768, "mlp_only_layers": [], "rope_parameters": rope}
    talker_text = {**tiny.TALKER_TEXT, "vocab_size": CODEC_VOCAB, "hidden_size": 1024, "intermediate_size": 2048,
                   "num_hidden_layers": args.talker_layers, "num_attention_heads": 16, "num_key_value_heads": 2,
                   "head_dim": 128, "num_experts": args.experts, "num_experts_per_tok": 6,
                   "moe_intermediate_size": 384, "shared_expert_intermediate_size": 768, "rope_parameters": rope}
    predictor = {"vocab_size": CODEBOOK, "hidden_size": 1024, "intermediate_size": 3072,
                 "num_hidden_layers": args.predictor_layers, "num_attention_heads": 16, "num_key_value_heads": 8,
                 "head_dim": 128, "num_code_groups": 16}
    code2wav = {"codebook_size": CODEBOOK, "num_quantizers": 16}  # transformers' defaults: the real shape
    config = tiny.tiny_qwen3_omni_config()
    config_dict = config.to_dict()
    thinker = {**config_dict["thinker_config"], "text_config": text,
               "vision_config": {**tiny.VISION, "out_hidden_size": 2048},
               "audio_config": {**tiny.AUDIO, "output_dim": 2048}}
    talker = {**config_dict["talker_config"], "text_config": talker_text, "code_predictor_config": predictor,
              "num_code_groups": 16, "thinker_hidden_size": 2048, "accept_hidden_layer": args.thinker_layers,
              "codec_eos_token_id": CODEC_EOS, "codec_nothink_id": 2155, "codec_think_bos_id": 2156,
              "codec_think_eos_id": 2157, "codec_pad_id": 2148, "codec_bos_id": 2149,
              "speaker_id": {"chelsie": 2301, "ethan": 2302}}
    config = Qwen3OmniMoeConfig(thinker_config=thinker, talker_config=talker, code2wav_config=code2wav,
                                **tiny.CHAT_IDS)
    model = Qwen3OmniMoeForConditionalGeneration(config).float().eval()
    tiny.randomize(model, seed=0)
    with torch.no_grad():  # no stop and no codec EOS: every reply runs to its limits
        model.thinker.lm_head.weight[[tiny.CHAT_IDS["im_end_token_id"], 152]] = 0.0
        model.talker.codec_head.weight[CODEC_EOS] = 0.0
    model.save_pretrained(directory)
    tiny.write_tokenizer(directory)
    return model


def served_engine(model, clients: int, frames: int, chunk: int, first_chunk: int) -> LLMEngine:
    settings = Qwen3SpeechSettings(chunk, first_chunk, QWEN3_TALKER_GREEDY, QWEN3_PREDICTOR_GREEDY, frames)
    return LLMEngine(model.thinker, model.tokenizer, max_slots=clients, context_length=1024,
                     speech=Qwen3SpeechModel(model.talker, model.token2wav, settings), admission="reserve")


def run_requests(model, engine: LLMEngine, clients: int, text_tokens: int) -> dict:
    """`clients` spoken requests arriving together, stepped to their end."""
    prepared = prepare_prompt(model.thinker, model.processor.build(PROMPT, speak=True), MediaEncoderCache(0))
    first_audio: dict[int, float] = {}
    last_text, samples = 0.0, 0
    start = time.perf_counter()
    for i in range(clients):
        engine.add_request(f"r{i}", prepared, SamplingParams(temperature=0.0, max_tokens=text_tokens),
                           voice=model.voices["Chelsie"])
    requests = [engine.find(f"r{i}") for i in range(clients)]
    while engine.has_work():
        for out in engine.step():
            if out.error is not None:
                raise out.error
            for message in as_engine_outputs(out):
                now = time.perf_counter() - start
                if isinstance(message, AudioChunk):
                    first_audio.setdefault(int(out.request_id[1:]), now)
                    samples += len(message.samples)
                elif isinstance(message, TextDelta):
                    last_text = now
    wall = time.perf_counter() - start
    frames = sum(len(r.speech.talker_stream.frames) for r in requests)
    ttfa = sorted(first_audio.values())
    return {"ttfa_p50": statistics.median(ttfa), "ttfa_p95": ttfa[round(0.95 * (len(ttfa) - 1))],
            "wall": wall, "last_text": last_text, "frames_per_s": frames / wall, "audio_s": samples / SAMPLE_RATE,
            "input_ids": model.processor.build(PROMPT, speak=True).input_ids}


def run_transformers(reference, input_ids: list[int], text_tokens: int, frames: int) -> dict:
    ids = torch.tensor([input_ids])
    start = time.perf_counter()
    with torch.no_grad():
        _, wav = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), speaker="chelsie",
                                    thinker_max_new_tokens=text_tokens, thinker_do_sample=False,
                                    talker_max_new_tokens=frames, talker_do_sample=False)
    return {"total": time.perf_counter() - start, "audio_s": wav.numel() / SAMPLE_RATE}


def chunk_costs(code2wav, frames: int, sizes: list[int]) -> list[tuple[int, float, float]]:
    """(chunk frames, decode seconds per second of audio, max |streamed - whole|) per size."""
    codes = torch.randint(0, CODEBOOK, (1, 16, frames), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = code2wav(codes)
        rows = []
        for size in sizes:
            stream, pieces, start = Code2WavStream(), [], time.perf_counter()
            for at in range(0, frames, size):
                pieces.append(code2wav(codes[..., at:at + size], stream))
            seconds = time.perf_counter() - start
            difference = float((torch.cat(pieces, dim=-1) - whole).abs().max())
            rows.append((size, seconds / (whole.shape[-1] / SAMPLE_RATE), difference))
    return rows


def joined_costs(code2wav, streams: int, size: int, chunks: int) -> tuple[float, float, float]:
    """`streams` utterances decoded `size` frames at a time, each alone then all joined (interleaved
    runs, best of 2): (alone s, joined s) per second of audio of all streams, max |joined - alone|."""
    codes = [torch.randint(0, CODEBOOK, (1, 16, size * chunks), generator=torch.Generator().manual_seed(i))
             for i in range(streams)]
    best = {"alone": float("inf"), "joined": float("inf")}
    with torch.inference_mode():
        for _ in range(2):
            for mode in best:
                rows, pieces, start = [Code2WavStream() for _ in codes], [], time.perf_counter()
                for at in range(0, size * chunks, size):
                    parts = [c[..., at:at + size] for c in codes]
                    if mode == "alone":
                        pieces.append([code2wav(part, row) for part, row in zip(parts, rows)])
                    else:
                        pieces.append(decode_joined(code2wav, parts, rows))
                best[mode] = min(best[mode], time.perf_counter() - start)
                wavs = [torch.cat([chunk[i] for chunk in pieces], dim=-1) for i in range(streams)]
                if mode == "alone":
                    alone_wavs = wavs
        difference = max(float((a - j).abs().max()) for a, j in zip(alone_wavs, wavs))
    audio_s = streams * size * chunks * 1920 / SAMPLE_RATE
    return best["alone"] / audio_s, best["joined"] / audio_s, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-tokens", type=int, default=24)
    parser.add_argument("--frames", type=int, default=40, help="talker max new tokens (codec frames)")
    parser.add_argument("--thinker-layers", type=int, default=2)
    parser.add_argument("--talker-layers", type=int, default=2)
    parser.add_argument("--predictor-layers", type=int, default=5)
    parser.add_argument("--experts", type=int, default=16, help="per MoE layer (the real models: 128)")
    parser.add_argument("--chunk-frames", type=int, default=8)
    parser.add_argument("--first-chunk-frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        reference = build_checkpoint(Path(tmp), args)
        print(f"checkpoint built in {time.perf_counter() - t0:.1f} s: thinker 2048x{args.thinker_layers}, talker "
              f"1024x{args.talker_layers}, code predictor 1024x{args.predictor_layers}, {args.experts} experts, "
              f"real Code2Wav; {args.text_tokens} text tokens, {args.frames} frames, {args.threads} threads, "
              f"chunks {args.first_chunk_frames} then {args.chunk_frames} frames")
        ours = load_omni(tmp, "float32")
    warm = run_requests(ours, served_engine(ours, 1, 4, args.chunk_frames, args.first_chunk_frames), 1, 4)
    run_transformers(reference, warm["input_ids"], 4, 4)  # first calls pay one-off costs
    one = run_requests(ours, served_engine(ours, 1, args.frames, args.chunk_frames, args.first_chunk_frames), 1,
                       args.text_tokens)
    theirs = run_transformers(reference, one["input_ids"], args.text_tokens, args.frames)
    del reference
    print(f"omnilive (streaming): first audio {one['ttfa_p50']:.2f} s (last text token at {one['last_text']:.2f} s), "
          f"total {one['wall']:.2f} s, {one['audio_s']:.2f} s of audio")
    print(f"transformers generate: audio at {theirs['total']:.2f} s (= total), {theirs['audio_s']:.2f} s of audio")
    print(f"TTFA_ours / time_to_audio_reference = {one['ttfa_p50'] / theirs['total']:.3f}; "
          f"total ours / reference = {one['wall'] / theirs['total']:.3f}")
    if args.levels:
        print(f"\n{'clients':>7} {'TTFA p50':>8} {'TTFA p95':>8} {'wall s':>7} {'frames/s':>8} {'audio s':>7}")
        rows = {}
        for clients in args.levels:
            engine = served_engine(ours, clients, args.frames, args.chunk_frames, args.first_chunk_frames)
            row = rows[clients] = run_requests(ours, engine, clients, args.text_tokens)
            print(f"{clients:>7} {row['ttfa_p50']:>8.2f} {row['ttfa_p95']:>8.2f} {row['wall']:>7.1f} "
                  f"{row['frames_per_s']:>8.1f} {row['audio_s']:>7.1f}", flush=True)
        if 1 in rows and max(rows) > 1:
            n = max(rows)
            print(f"frames/s c={n} / c=1 = {rows[n]['frames_per_s'] / rows[1]['frames_per_s']:.2f}; "
                  f"TTFA p50 c={n} / c=1 = {rows[n]['ttfa_p50'] / rows[1]['ttfa_p50']:.2f}")
    if args.chunk_sizes:
        print("\nCode2Wav chunk size: decode s per s of audio, max |streamed - whole| (float32)")
        for size, rtf, difference in chunk_costs(ours.token2wav, max(args.chunk_sizes) * 4, args.chunk_sizes):
            print(f"{size:>4} frames  {rtf:.3f}  {difference:.2e}")
        streams = max(args.levels or [4])
        if streams > 1:
            for size in (args.first_chunk_frames, args.chunk_frames):
                alone, joined, difference = joined_costs(ours.token2wav, streams, size, 4)
                print(f"{streams} streams, {size}-frame chunks: decode s per s of audio alone {alone:.3f}, joined "
                      f"{joined:.3f} (joined / alone = {joined / alone:.2f}), max |joined - alone| {difference:.2e}")


if __name__ == "__main__":
    main()

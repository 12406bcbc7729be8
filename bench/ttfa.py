"""Time to first audio: omnilive's streaming Qwen2.5-Omni vs transformers' generate(return_audio=True).

Prints, never asserts. Both run the same random-weight checkpoint (built here with transformers'
own classes, float32), the same prompt and the same limits, greedy everywhere (so both produce
the same text and codec tokens). transformers returns the waveform only once thinker, talker and
token2wav have all finished: its time to audio is its total time. omnilive interleaves the
three stages and emits AudioChunks as they become final.

Sizes (random weights: timing only; tokenizer and vocabulary are the test checkpoint's tiny ones):
  thinker   hidden 512, 8 layers, 8 heads (2 kv), MLP 1536
  talker    Qwen2.5-Omni-7B's shape (hidden 896, 12 heads of 128, 4 kv, MLP 4864, codec vocab 8448)
            with --talker-layers of its 24 layers
  token2wav real DiT shape (hidden 1024, 16 heads, block 24) with --dit-layers of its 22 layers,
            real BigVGAN (1536 channels, 6 upsampling stages); 10 ODE steps as the reference
The talker's and thinker's stop / control rows of their output heads are zeroed, so neither
ends early by chance: replies run to the limits.

    python bench/ttfa.py [--text-tokens 32] [--codec-tokens 72] [--threads 2] [--schedule 3,2,1] [--levels 1 4 8]

Then (--levels) the same request N times at once through the served engine's batched step loop
(engine.llm_engine.LLMEngine): TTFA p50/p95 over the N, and the aggregate text and codec tokens per second.

--schedule: token2wav's streaming windows in DiT blocks, chunk,past,future[,first chunk]
(default: the engine's SPEECH_SCHEDULE, Qwen's 3,2,1 after a 2-block first chunk);
--first-chunk-steps N and --speech-dtype bfloat16: the engine's lossy speech options
(bench/speech_quality.py prints their log-mel cost). The first
audio needs (first chunk + future) blocks of codes solved, then the vocoder's right context
(vocoder_receptive_field frames) of final mel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.model.omni_tiny

from omnilive.backends.native_media_keys import MediaEncoderCache, prepare_prompt
from omnilive.backends.native_omni import load_omni
from omnilive.engine.async_engine import as_engine_outputs
from omnilive.engine.llm_engine import LLMEngine, SpeechModel
from omnilive.engine.speech import SPEECH_SCHEDULE, QuickStartSchedule, SpeechSettings
from omnilive.engine.talker_generate import TALKER_GREEDY
from omnilive.types import AudioChunk, Message, SamplingParams, TextDelta
from omnilive.model.token2wav import pack_dit
from omnilive.model.token2wav_stream import StreamingSchedule
from tests.model import omni_tiny

THINKER = {**omni_tiny.TEXT, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
           "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 4096,
           "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}}
CODEC_VOCAB, SPEECH_CODES = 8448, 8193
CODEC_TOKENS = {"tts_codec_pad_token_id": 8292, "tts_codec_start_token_id": 8293, "tts_codec_end_token_id": 8294,
                "tts_codec_mask_token_id": 8296}
PROMPT = (Message("user", ("Tell me a long story about the sea, the wind and a small boat.",)),)
STEPS = 10
WARMUP_TEXT_TOKENS, WARMUP_CODEC_TOKENS = 4, 8


def build_checkpoint(directory: Path, talker_layers: int, dit_layers: int):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    talker = {**omni_tiny.TALKER, **CODEC_TOKENS, "vocab_size": CODEC_VOCAB, "embedding_size": 512,
              "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": talker_layers,
              "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 4096,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
    ahead, back = (dit_layers // 2,), (0, dit_layers - 1)  # the real 22 layers look ahead at 10, back at 0 and 20
    dit = {"num_hidden_layers": dit_layers, "look_ahead_layers": list(ahead), "look_backward_layers": list(back)}
    thinker = dict(text_config=THINKER, vision_config={**omni_tiny.VISION, "out_hidden_size": 512},
                   audio_config={**omni_tiny.AUDIO, "output_dim": 512}, **omni_tiny.TOKENS)
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, enable_audio_output=True,
                               token2wav_config={"dit_config": dit, "bigvgan_config": {}})
    model = Qwen2_5OmniForConditionalGeneration(config).float().eval()
    omni_tiny.randomize(model, seed=0)
    with torch.no_grad():  # zero logits: below the best of thousands of random ones, so never chosen
        model.talker.codec_head.weight[SPEECH_CODES:] = 0.0
        stop_ids = [omni_tiny.SPECIAL_TOKENS[t] for t in ("<|im_end|>", "<|endoftext|>")]
        model.thinker.lm_head.weight[stop_ids] = 0.0
    model.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    voices = {name: {"cond": torch.randn(1, 192, generator=generator),
                     "ref_mel": torch.randn(1, 300, 80, generator=generator) - 5.0, "bos_token": bos}
              for name, bos in omni_tiny.VOICE_BOS_TOKENS.items()}
    torch.save(voices, directory / "spk_dict.pt")
    omni_tiny.write_tokenizer(directory)
    model.load_speakers(str(directory / "spk_dict.pt"))
    return model


def served_engine(model, clients: int, codec_tokens: int, schedule: StreamingSchedule,
                  first_chunk_steps: int | None, speech_dtype: torch.dtype) -> LLMEngine:
    """The engine NativeBackend serves with, greedy talker, `clients` rows."""
    settings = SpeechSettings.for_model(model.token2wav, STEPS, TALKER_GREEDY, schedule, codec_tokens,
                                       first_chunk_steps, speech_dtype)
    return LLMEngine(model.thinker, model.tokenizer, max_slots=clients, context_length=2048,
                     speech=SpeechModel(model.talker, model.token2wav, settings), admission="reserve")


def run_requests(model, engine: LLMEngine, seeds: list[int], text_tokens: int, emit) -> list:
    """Spoken requests arriving together, stepped to the end; emit(i, t, output) as they come."""
    prompt = model.processor.build(PROMPT, speak=True)
    prepared = prepare_prompt(model.thinker, prompt, MediaEncoderCache(0))
    start = time.perf_counter()
    for i, seed in enumerate(seeds):  # greedy text and codes; each its own token2wav noise
        engine.add_request(f"r{i}", prepared, SamplingParams(temperature=0.0, max_tokens=text_tokens, seed=seed),
                           voice=model.voices["Chelsie"])
    requests = [engine.find(f"r{i}") for i in range(len(seeds))]
    while engine.has_work():
        for out in engine.step():
            if out.error is not None:
                raise out.error
            for message in as_engine_outputs(out):
                emit(int(out.request_id[1:]), time.perf_counter() - start, message)
    return requests


def run_omnilive(model, text_tokens: int, codec_tokens: int, schedule: StreamingSchedule = SPEECH_SCHEDULE,
                 first_chunk_steps: int | None = None, speech_dtype: torch.dtype = torch.float32) -> dict:
    engine = served_engine(model, 1, codec_tokens, schedule, first_chunk_steps, speech_dtype)
    events: list[tuple[float, object]] = []
    start = time.perf_counter()
    run_requests(model, engine, [0], text_tokens, lambda i, t, out: events.append((t, out)))
    total = time.perf_counter() - start
    audio = [(t, out) for t, out in events if isinstance(out, AudioChunk)]
    texts = [t for t, out in events if isinstance(out, TextDelta)]
    return {"ttfa": audio[0][0], "total": total, "chunks": len(audio), "last_text": texts[-1],
            "samples": sum(len(out.samples) for _, out in audio),
            "input_ids": model.processor.build(PROMPT, speak=True).input_ids}


def run_concurrent(model, clients: int, text_tokens: int, codec_tokens: int, schedule: StreamingSchedule,
                   first_chunk_steps: int | None, speech_dtype: torch.dtype) -> dict:
    """`clients` spoken requests arriving together (a burst), batched by the served step loop:
    TTFA of each; thinker tokens per second until the last text token (the text phase), talker
    codec tokens per second over the whole run (speech ends last)."""
    engine = served_engine(model, clients, codec_tokens, schedule, first_chunk_steps, speech_dtype)
    first_audio: dict[int, float] = {}
    text = [0] * clients
    last_text = [0.0] * clients
    samples = [0] * clients

    def emit(i: int, t: float, out) -> None:
        if isinstance(out, AudioChunk):
            first_audio.setdefault(i, t)
            samples[i] += len(out.samples)
        elif isinstance(out, TextDelta):
            text[i] += 1
            last_text[i] = t

    start = time.perf_counter()
    requests = run_requests(model, engine, list(range(clients)), text_tokens, emit)
    wall = time.perf_counter() - start
    codes = sum(len(request.speech.codes) for request in requests)
    ttfa = sorted(first_audio.values())
    return {"clients": clients, "ttfa_p50": statistics.median(ttfa), "ttfa_p95": _p95(ttfa), "wall": wall,
            "text_done": max(last_text), "text_tps": sum(text) / max(last_text), "codec_tps": codes / wall,
            "audio_s": sum(samples) / 24_000}


def _p95(values: list[float]) -> float:
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def run_transformers(model, input_ids: list[int], text_tokens: int, codec_tokens: int) -> dict:
    ids = torch.tensor([input_ids])
    start = time.perf_counter()
    with torch.no_grad():
        sequences, wav = model.generate(ids, attention_mask=torch.ones_like(ids), speaker="Chelsie",
                                        thinker_max_new_tokens=text_tokens, thinker_do_sample=False,
                                        talker_max_new_tokens=codec_tokens, talker_do_sample=False,
                                        token2wav_num_steps=STEPS)
    total = time.perf_counter() - start
    return {"total": total, "samples": wav.numel(), "text_tokens": sequences.shape[1] - ids.shape[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--codec-tokens", type=int, default=72, help="talker max new tokens (end token included)")
    parser.add_argument("--talker-layers", type=int, default=4)
    parser.add_argument("--dit-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schedule", help="token2wav streaming windows in DiT blocks: chunk,past,future "
                        "(3,2,1 = Qwen's own), or chunk,past,future,first for a smaller first chunk; "
                        "default: the engine's (3,2,1,2)")
    parser.add_argument("--first-chunk-steps", type=int, help="ODE steps of the first streamed window "
                        "(default: 10, as every window; OMNILIVE_TOKEN2WAV_FIRST_CHUNK_STEPS)")
    parser.add_argument("--speech-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the streamed DiT solves' dtype (OMNILIVE_SPEECH_DTYPE)")
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 4, 8],
                        help="then this many requests at once through the batched step loop (none: skip)")
    args = parser.parse_args()
    speech_dtype = getattr(torch, args.speech_dtype)
    blocks = [int(n) for n in args.schedule.split(",")] if args.schedule else None
    schedule = (SPEECH_SCHEDULE if blocks is None else StreamingSchedule(*blocks) if len(blocks) == 3
                else QuickStartSchedule(*blocks))
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        reference = build_checkpoint(directory, args.talker_layers, args.dit_layers)
        print(f"checkpoint built in {time.perf_counter() - t0:.1f} s: thinker 512x8, talker 896x{args.talker_layers}, "
              f"DiT 1024x{args.dit_layers}, real BigVGAN; {args.text_tokens} text tokens, "
              f"{args.codec_tokens} codec tokens max, {STEPS} ODE steps (first window {args.first_chunk_steps or STEPS}), "
              f"DiT {args.speech_dtype}, {args.threads} threads, schedule {schedule}")
        ours_model = load_omni(directory, "float32")
        pack_dit(ours_model.token2wav, speech_dtype)  # as the served engine does
        # a short warm-up request each: first calls pay one-off costs (allocations, kernel setup)
        warm = run_omnilive(ours_model, WARMUP_TEXT_TOKENS, WARMUP_CODEC_TOKENS, schedule, args.first_chunk_steps,
                            speech_dtype)
        run_transformers(reference, warm["input_ids"], WARMUP_TEXT_TOKENS, WARMUP_CODEC_TOKENS)
        ours = run_omnilive(ours_model, args.text_tokens, args.codec_tokens, schedule, args.first_chunk_steps,
                            speech_dtype)
        theirs = run_transformers(reference, ours["input_ids"], args.text_tokens, args.codec_tokens)
    seconds = ours["samples"] / 24_000
    print(f"omnilive (streaming): first audio {ours['ttfa']:.2f} s (last text token at {ours['last_text']:.2f} s), "
          f"total {ours['total']:.2f} s, {ours['chunks']} chunks, {seconds:.2f} s of audio")
    print(f"transformers generate(return_audio=True): audio at {theirs['total']:.2f} s (= total), "
          f"{theirs['samples'] / 24_000:.2f} s of audio, {theirs['text_tokens']} text tokens")
    print(f"TTFA_ours / time_to_audio_reference = {ours['ttfa'] / theirs['total']:.3f}; "
          f"total ours / reference = {ours['total'] / theirs['total']:.3f}")
    if not args.levels:
        return
    del reference
    print("\nconcurrency: N requests at once, batched (thinker rows, talker rows; token2wav windows of streams "
          "ahead of their listeners)")
    print(f"{'clients':>7} {'TTFA p50':>8} {'TTFA p95':>8} {'text s':>7} {'text tok/s':>10} {'wall s':>7} "
          f"{'codec tok/s':>11} {'audio s':>7}")
    rows = {}
    for clients in args.levels:
        row = rows[clients] = run_concurrent(ours_model, clients, args.text_tokens, args.codec_tokens, schedule,
                                             args.first_chunk_steps, speech_dtype)
        print(f"{clients:>7} {row['ttfa_p50']:>8.2f} {row['ttfa_p95']:>8.2f} {row['text_done']:>7.1f} "
              f"{row['text_tps']:>10.1f} {row['wall']:>7.1f} {row['codec_tps']:>11.1f} {row['audio_s']:>7.1f}",
              flush=True)
    if 1 in rows and 4 in rows:
        print(f"TTFA p50 c=4 / c=1 = {rows[4]['ttfa_p50'] / rows[1]['ttfa_p50']:.2f} (target <= 1.5)")
    if 1 in rows and 8 in rows:
        print(f"codec tokens/s c=8 / c=1 = {rows[8]['codec_tps'] / rows[1]['codec_tps']:.2f}, "
              f"text tokens/s c=8 / c=1 = {rows[8]['text_tps'] / rows[1]['text_tps']:.2f} (target >= 4)")


if __name__ == "__main__":
    main()

"""The Qwen3-Omni talker step (one frame: the code predictor's G - 1 steps and one talker step),
as served vs as it ran before (and packed without fusing): ms per frame, by streams stepped together.

Prints, never asserts. One random-weight checkpoint at the real talker and code-predictor
widths (bench/ttfa_qwen3_omni.py's, float32 or --dtype), loaded twice in this process:
- served: `load_qwen3_omni_talker` (linears packed for oneDNN where the CPU runs the dtype
  natively) with `make_predictor_cache` (a FrameKVCache);
- packed: the same weights packed as served but without the fused q/k/v and gate/up calls;
- before: the same weights unpacked, with a slot KVCache for the code predictor.
Both run greedy from the same prefills and must give the same codes (checked, printed). Runs
alternate (before, served, before, ...) and each keeps its fastest frame step of all rounds, as
this machine's speed (shared, 2 cores) moves from second to second.

    python bench/talker_step_qwen3_omni.py [--frames 6] [--streams 1 4] [--rounds 4] [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ttfa_qwen3_omni.py

from omnilive.backends.native_omni import load_omni
from omnilive.engine.qwen3_talker_generate import (
    QWEN3_PREDICTOR_GREEDY,
    QWEN3_TALKER_GREEDY,
    qwen3_talker_step,
    start_qwen3_talker_stream,
)
from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen3_omni_talker import (
    TALKER_PREFIX,
    Qwen3OmniTalker,
    Qwen3OmniTalkerConfig,
    build_talker_prefill,
    new_talker_text_inputs,
)
from omnilive.model.weights import empty_model, load_state_dict_strict
from ttfa_qwen3_omni import PROMPT, build_checkpoint


def unpacked_talker(directory: Path, dtype: torch.dtype) -> Qwen3OmniTalker:
    """The talker as loaded before packing."""
    model = empty_model(Qwen3OmniTalker, Qwen3OmniTalkerConfig.from_dict(read_config(directory)), dtype)
    load_state_dict_strict(model, load_prefixed_tensors(directory, TALKER_PREFIX), assign=True)
    return model


@torch.inference_mode()
def talk(talker, predictor_cache, embed, input_ids: torch.Tensor, streams: int, frames: int):
    """(the fastest frame step's seconds, every stream's frames) of `streams` greedy streams."""
    cache = talker.make_cache(streams, len(input_ids) + frames + 16)
    started = []
    for slot in range(streams):
        prefill = build_talker_prefill(talker, embed, input_ids, embed(input_ids), embed(torch.tensor([100 + slot])),
                                       2301)
        text_inputs = new_talker_text_inputs(talker, embed, prefill)
        for token in range(frames + 2):
            text_inputs.push(talker.text_projection(embed(torch.tensor(101 + token)).to(talker.dtype)))
        started.append(start_qwen3_talker_stream(talker, prefill, text_inputs, cache, slot, QWEN3_TALKER_GREEDY,
                                                 QWEN3_PREDICTOR_GREEDY, None, frames + 1))
    best = float("inf")
    for _ in range(frames):
        start = time.perf_counter()
        qwen3_talker_step(talker, started, cache, predictor_cache)
        best = min(best, time.perf_counter() - start)
    return best, [s.frames for s in started]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--talker-layers", type=int, default=2)
    parser.add_argument("--predictor-layers", type=int, default=5)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp), argparse.Namespace(thinker_layers=1, talker_layers=args.talker_layers,
                                                       predictor_layers=args.predictor_layers, experts=args.experts))
        model = load_omni(tmp, dtype)
        before = unpacked_talker(Path(tmp), dtype)
        packed = unpacked_talker(Path(tmp), dtype)
    for decoder in (packed, packed.code_predictor):
        pack_decoder(decoder)
    embed, served = model.thinker.model.embed_tokens, model.talker
    input_ids = torch.tensor(model.processor.build(PROMPT, speak=True).input_ids)
    groups = served.talker_config.num_code_groups
    print(f"talker 1024 x {args.talker_layers} ({args.experts} experts), code predictor 1024 x "
          f"{args.predictor_layers}, {groups} codebooks, {args.dtype}, {args.threads} threads, {args.frames} frames")
    print(f"{'streams':>7} {'before ms':>10} {'packed ms':>10} {'served ms':>10} {'served / before':>16} "
          f"{'same codes':>11}")
    talkers = {"before": before, "packed": packed, "served": served}
    for streams in args.streams:
        caches = {"before": before.code_predictor.make_cache(streams, groups),
                  "packed": packed.make_predictor_cache(streams), "served": served.make_predictor_cache(streams)}
        best, codes = dict.fromkeys(talkers, float("inf")), {}
        for name, talker in talkers.items():  # warm
            talk(talker, caches[name], embed, input_ids, streams, 2)
        for _ in range(args.rounds):
            for name, talker in talkers.items():
                seconds, codes[name] = talk(talker, caches[name], embed, input_ids, streams, args.frames)
                best[name] = min(best[name], seconds)
        same = codes["before"] == codes["packed"] == codes["served"]
        print(f"{streams:>7} {best['before'] * 1e3:>10.1f} {best['packed'] * 1e3:>10.1f} {best['served'] * 1e3:>10.1f} "
              f"{best['served'] / best['before']:>16.3f} {str(same):>11}", flush=True)


if __name__ == "__main__":
    main()

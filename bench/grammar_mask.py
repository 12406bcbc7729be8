"""What a grammar costs per token: the next-token mask of llguidance (what the engine uses),
xgrammar and outlines-core, side by side, over the embedded default's 152k-token vocabulary.

    python bench/grammar_mask.py [--rounds 5]

For one tool call (`get_weather` with a four-field schema) and one strict JSON reply, each
library masks every position of a fixed reply (computing the mask, applying it to a [1, V]
logits row, then advancing by the reply's token). Prints the mean and worst time per token
after warm-up rounds (every library caches what it learns about the grammar), and the cost of
building each library's vocabulary once. A library that is not installed is skipped
(`pip install xgrammar outlines-core` to compare all three).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from omnilive.backends import assets
from omnilive.engine.grammar import GrammarVocabulary, apply_allowed
from omnilive.engine.tool_calls import output_format
from omnilive.model.gguf_loader import read_metadata
from omnilive.model.tokenizer import Tokenizer
from omnilive.types import ResponseFormat, Tool, ToolChoice

VOCAB = 151936  # Qwen2.5's logits width
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer"}, "hourly": {"type": "boolean"}},
           "required": ["city", "unit", "days", "hourly"], "additionalProperties": False}
ARGUMENTS = '{"city": "Tokyo, Japan", "unit": "celsius", "days": 3, "hourly": false}'
CASES = {
    "tool call": (output_format((Tool("get_weather", None, json.dumps(WEATHER)),),
                                ToolChoice("function", "get_weather", False), None).grammar,
                  f'<tool_call>\n{{"name": "get_weather", "arguments": {ARGUMENTS}}}\n</tool_call>'),
    "json schema": (output_format((), ToolChoice("none"), ResponseFormat("json_schema", json.dumps(WEATHER))).grammar,
                    ARGUMENTS),
}


def embedded_tokenizer() -> Tokenizer:
    import gguf

    return Tokenizer.from_gguf_fields(read_metadata(gguf.GGUFReader(str(assets.qwen_coder_gguf()))))


def timed_rounds(run, rounds: int) -> list[float]:
    run()  # warm-up: caches fill
    times: list[float] = []
    for _ in range(rounds):
        times += run()
    return times


def ours(tokenizer: Tokenizer, grammar: str, ids: list[int], rounds: int) -> list[float]:
    vocabulary = GrammarVocabulary(tokenizer, VOCAB)

    def run():
        state, logits, times = vocabulary.compile(grammar), torch.zeros(1, VOCAB), []
        for token in ids:
            start = time.perf_counter()
            apply_allowed(logits, [0], [state.allowed()])
            times.append(time.perf_counter() - start)
            state.accept(token)
        return times

    return timed_rounds(run, rounds)


def xgrammar_times(tokenizer: Tokenizer, schema: str, ids: list[int], rounds: int, stops) -> list[float]:
    import xgrammar

    info = xgrammar.TokenizerInfo([tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)],
                                  xgrammar.VocabType.RAW, vocab_size=VOCAB, stop_token_ids=stops)
    compiled = xgrammar.GrammarCompiler(info).compile_json_schema(schema)

    def run():
        matcher, mask, logits, times = xgrammar.GrammarMatcher(compiled), xgrammar.allocate_token_bitmask(1, VOCAB), \
            torch.zeros(1, VOCAB), []
        for token in ids:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            xgrammar.apply_token_bitmask_inplace(logits, mask)
            times.append(time.perf_counter() - start)
            matcher.accept_token(token)
        return times

    return timed_rounds(run, rounds)


def outlines_times(tokenizer: Tokenizer, schema: str, ids: list[int], rounds: int, eos: int) -> list[float]:
    import outlines_core

    texts: dict[str, list[int]] = {}
    for i in range(tokenizer.vocab_size):
        if i != eos and not tokenizer.is_special(i):
            texts.setdefault(tokenizer.token_bytes(i).decode("latin-1"), []).append(i)
    regex = outlines_core.json_schema.build_regex_from_schema(schema)
    index = outlines_core.Index(regex, outlines_core.Vocabulary(eos, texts))

    def run():
        guide, logits, times = outlines_core.Guide(index), torch.zeros(1, VOCAB), []
        for token in ids:
            start = time.perf_counter()
            allowed = torch.tensor(guide.get_tokens(), dtype=torch.long)
            logits[0].index_fill_(0, allowed, 0.0)
            times.append(time.perf_counter() - start)
            if token != eos:  # outlines-core ends at EOS without advancing to it
                guide.advance(token)
        return times

    return timed_rounds(run, rounds)


def report(name: str, times: list[float]) -> None:
    ms = sorted(t * 1e3 for t in times)
    print(f"  {name:<14} mean {statistics.mean(ms):6.3f} ms   p95 {ms[int(0.95 * (len(ms) - 1))]:6.3f} ms"
          f"   max {ms[-1]:6.3f} ms   ({len(ms)} tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = embedded_tokenizer()
    stops = sorted(tokenizer.stop_token_ids)
    start = time.perf_counter()
    GrammarVocabulary(tokenizer, VOCAB).tokenizer  # noqa: B018 - builds it
    print(f"llguidance vocabulary built in {time.perf_counter() - start:.2f} s (once per engine)")
    for case, (grammar, reply) in CASES.items():
        ids = tokenizer.encode(reply) + [stops[0]]
        print(f"{case}: {len(ids)} tokens")
        report("llguidance", ours(tokenizer, grammar, ids, args.rounds))
        if case != "json schema":
            continue  # the other two take a JSON schema, not our tool-call grammar
        for name, measure in (("xgrammar", lambda: xgrammar_times(tokenizer, json.dumps(WEATHER), ids, args.rounds,
                                                                   stops)),
                              ("outlines-core", lambda: outlines_times(tokenizer, json.dumps(WEATHER), ids,
                                                                       args.rounds, stops[0]))):
            try:
                report(name, measure())
            except ImportError:
                print(f"  {name:<14} not installed")


if __name__ == "__main__":
    main()

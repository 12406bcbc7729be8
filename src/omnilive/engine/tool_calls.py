"""Tool calls in the Hermes style that Qwen2.5 and Qwen3 are trained on, and the grammars that
guarantee them.

The model writes each call as

    <tool_call>
    {"name": "get_weather", "arguments": {"location": "Tokyo"}}
    </tool_call>

`ToolCallParser` splits a reply's content, as it streams, into plain text and tool-call deltas
(OpenAI's streaming shape: the first delta of a call has its id and name, the next ones pieces
of its arguments; joined, the pieces are exactly the arguments the model wrote).
`output_format` turns a request's tools, tool choice and response format into a grammar
(engine/grammar.py enforces it token by token): a named or required choice must call, with
arguments valid against the function's schema; auto may write text or call (a call once begun
is held to its schema); a strict JSON reply must validate.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from omnilive.types import ResponseFormat, Tool, ToolCallDelta, ToolChoice

CALL_START, CALL_END = "<tool_call>", "</tool_call>"
CALL_CLOSE = "}\n" + CALL_END  # the call object's brace and the closing tag
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
# what may end a call's body after its arguments: the call object's "}" (and a closing fence)
_BODY_TAIL = re.compile(r"\s*(\}\s*)?(`{1,3}\s*)?$")
# JSON whitespace the grammar allows between tokens: arguments as Qwen writes them (one space
# after ":" and ","), answers compact or pretty-printed; never unbounded runs of blanks
ARGUMENTS_WHITESPACE = " ?"
ANSWER_WHITESPACE = "( ?|\n {0,16})"
JSON_OBJECT = '{"type": "object"}'
_FENCE = re.compile(r"```(json)?\n")


@dataclass(frozen=True)
class OutputFormat:
    """What the engine does with a request's reply beyond sampling it."""

    grammar: str | None = None  # an llguidance grammar the reply must follow (None: free)
    tool_calls: bool = False  # parse tool calls out of the reply's content

    @property
    def param(self) -> str:
        """The request field an invalid grammar comes from."""
        return "tools" if self.tool_calls else "response_format"


def output_format(tools: tuple[Tool, ...], choice: ToolChoice,
                  response_format: ResponseFormat | None) -> OutputFormat | None:
    """The grammar and parsing for a request; None for a plain reply."""
    calling = [t for t in tools if choice.mode != "none" and (choice.mode != "function" or t.name == choice.function)]
    answer = _json_rule(response_format) if response_format is not None else None
    if not calling:
        if answer:
            return OutputFormat(grammar=_grammar("start: WS answer", answer))
        # tools given but not to be called: words, not a call written out as JSON (what a small
        # model does after a tool result)
        return OutputFormat(grammar=_grammar("start: WORDS", None)) if tools else None
    more = ' ("\\n" call)*' if choice.parallel else ""
    if choice.mode in ("required", "function"):
        start = f"start: WS call{more}"
    elif answer:  # auto with a JSON answer: that answer, or calls
        start = f'start: WS answer | pre call_body{more}\npre[lazy]: WORDS "{_lark(CALL_START)}"'
    else:
        # auto: words, or calls once "<tool_call>" appears. Words do not open with a code fence
        # or a JSON object: a reply that does is a single call written as a bare JSON object
        # (what small models write when they mean to call), held to the same schema.
        start = f'start: WORDS | pre call_body{more} | WS FENCE? bare FENCE_END?\n' \
                f'pre[lazy]: WORDS "{_lark(CALL_START)}"'
    rules = [start, f'call: "{_lark(CALL_START)}" call_body',
             "call_body: " + " | ".join(f'"\\n" call_{i} "{_lark(CALL_CLOSE)}"' for i in range(len(calling))),
             "bare: " + " | ".join(f'call_{i} "}}"' for i in range(len(calling)))]
    for i, tool in enumerate(calling):
        rules.append(f'call_{i}: "{_lark(_call_head(tool.name))}" args_{i}')
        rules.append(f"args_{i}: %json {_schema(tool.parameters, ARGUMENTS_WHITESPACE)}")
    return OutputFormat(grammar=_grammar("\n".join(rules), answer), tool_calls=True)


def _call_head(name: str) -> str:
    return f'{{"name": {json.dumps(name)}, "arguments": '


def _grammar(rules: str, answer: str | None) -> str:
    lines = ["%llguidance {}", rules, r"WS: /[ \t\r\n]*/", r"WORDS: /([ \t\r\n]*[^ \t\r\n`{](.|\n)*)?/",
             r"FENCE: /```(json)?\n/", r"FENCE_END: /\n```/"]
    if answer:
        lines.append(f"answer: {answer}")
    return "\n".join(lines)


def _json_rule(response_format: ResponseFormat) -> str:
    schema = response_format.schema if response_format.type == "json_schema" else None
    return "%json " + _schema(schema or JSON_OBJECT, ANSWER_WHITESPACE)


def _schema(text: str, whitespace: str) -> str:
    """One line, as lark needs, with llguidance's whitespace rule unless the schema sets its own."""
    schema = json.loads(text)
    if isinstance(schema, dict):
        schema = {**schema, "x-guidance": schema.get("x-guidance", {"whitespace_pattern": whitespace})}
    return json.dumps(schema, ensure_ascii=False)


def _lark(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


@dataclass
class _Call:
    index: int
    id: str
    body: str = ""  # the text after <tool_call>
    name: str | None = None
    args_from: int = -1  # where the arguments start in body, once the name is known
    sent: int = 0  # how much of body's arguments went out


class ToolCallParser:
    """Content text in, (plain text, tool-call deltas) out, as the text streams."""

    def __init__(self) -> None:
        self._held = ""  # text that may be the start of CALL_START
        self._lead = ""  # blank text before anything else: dropped if calls follow
        self._text_seen = False
        self._call: _Call | None = None
        self.calls = 0  # complete or begun calls so far

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        out, deltas = [], []
        pending = self._held + text
        self._held = ""
        if self._call is None and not self.calls and not self._text_seen:
            pending, self._lead = self._lead + pending, ""
            bare = self._bare_opening(pending)
            if bare is None:  # too early to tell
                self._lead = pending
                return "", []
            if bare is not False:
                self._call, pending = self._new_call(), bare
        while pending:
            if self._call is None:
                at = pending.find(CALL_START)
                if at < 0:
                    keep = _partial_suffix(pending, CALL_START)
                    out.append(self._plain(pending[: len(pending) - keep]))
                    self._held = pending[len(pending) - keep:]
                    break
                out.append(self._plain(pending[:at]))
                self._call = self._new_call()
                pending = pending[at + len(CALL_START):]
                continue
            end = pending.find(CALL_END)
            if end < 0:
                keep = _partial_suffix(pending, CALL_END)
                self._call.body += pending[: len(pending) - keep]
                self._held = pending[len(pending) - keep:]
                deltas += self._progress(final=False)
                break
            self._call.body += pending[:end]
            deltas += self._progress(final=True)
            self._call = None
            pending = pending[end + len(CALL_END):]
        return "".join(out), deltas

    def _new_call(self) -> _Call:
        self.calls += 1
        return _Call(self.calls - 1, f"call_{uuid.uuid4().hex[:24]}")

    @staticmethod
    def _bare_opening(text: str) -> str | bool | None:
        """A reply that opens with a JSON object, bare or fenced, is one call (see output_format):
        the text of its body; False for words; None while it cannot be told yet."""
        stripped = text.lstrip()
        if not stripped:
            return None
        if stripped[0] == "{":
            return stripped
        if stripped[0] != "`":
            return False
        fence = _FENCE.match(stripped)
        if fence is None:
            return None if "\n" not in stripped and len(stripped) < 8 else False
        body = stripped[fence.end():]
        return None if not body.strip() else (body if body.lstrip()[0] == "{" else False)

    def _plain(self, text: str) -> str:
        """Blank text before the first words or between calls is not content."""
        if self._text_seen:
            return "" if self.calls and not text.strip() else text
        text, self._lead = self._lead + text, ""
        if text.strip():
            self._text_seen = True
            return text
        if not self.calls:
            self._lead = text
        return ""

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """The reply ended: flush held text; a call left open ends as far as it got."""
        held, self._held = self._held, ""
        if self._call is None:
            lead, self._lead = ("", "") if self.calls else (self._lead, "")
            return lead + held, []
        self._call.body += held
        deltas = self._progress(final=True)
        self._call = None
        return "", deltas

    def _progress(self, final: bool) -> list[ToolCallDelta]:
        call, deltas = self._call, []
        if call.name is None:
            head = _CALL_HEAD.match(call.body)
            if head is None:
                if final:  # not in the name-first shape: the whole body, parsed at once
                    deltas += self._whole(call)
                return deltas
            call.name, call.args_from = json.loads(f'"{head.group(1)}"'), head.end()
            deltas.append(ToolCallDelta(call.index, id=call.id, name=call.name))
        args = call.body[call.args_from:]
        tail = _BODY_TAIL.search(args)
        # hold back what may be the body's closing "}" (and the space around it) until the end
        ready = len(args) if final and tail.group(1) is None else tail.start()
        if ready > call.sent:
            deltas.append(ToolCallDelta(call.index, arguments=args[call.sent: ready]))
            call.sent = ready
        return deltas

    @staticmethod
    def _whole(call: _Call) -> list[ToolCallDelta]:
        try:
            body = json.loads(call.body)
            name, arguments = body["name"], body.get("arguments", {})
        except (ValueError, KeyError, TypeError):
            name, arguments = "", call.body.strip()  # malformed: its text, under no name
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return [ToolCallDelta(call.index, id=call.id, name=str(name)), ToolCallDelta(call.index, arguments=text)]


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0

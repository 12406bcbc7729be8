"""Streaming text -> speakable chunks, so speech can start before the reply is finished.

    chunker = SpeechChunker()
    for delta in llm_text_deltas:
        for chunk in chunker.feed(delta):
            speak(chunk)
    for chunk in chunker.flush():
        speak(chunk)

Two stages, both left-to-right with a few characters of lookahead, so feeding a reply in any
pieces gives the same output as feeding it whole ("".join(chunks) == speakable_text(reply)):

1. `MarkdownToSpeech` drops what should not be read aloud: code fences and their contents,
   heading marks, list bullets and numbers, quote marks, emphasis (*, _), backticks; links and
   images become their text.
2. `SpeechChunker` cuts that text. The first chunk goes out once it has `min_first_words` words
   and reaches a clause boundary (, ; : —) or a phrase break (before "is", "in", "which", ...:
   `PHRASE_STARTS`), or at the first sentence end, so speech starts early: "The capital of
   France | is Paris." speaks after five tokens instead of eight. Later chunks end at sentence
   ends (. ! ? … newline, 。！？), or are cut at `max_chars`.
   A period does not end a sentence inside "3.14", "...x", after "e.g." / "Dr." / initials, or
   before a lower-case word.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e cf fig approx mt lt gen col sgt rev hon".split()
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(\s+)")
_CJK_SENTENCE_END = re.compile(r"[。！？]+[」』”’）]*\s*")
_NEWLINE = re.compile(r"\n\s*")
_CLAUSE = re.compile(r"[,;:]\s+|[—–]\s*|[，；：、]\s*")
_INITIALISM = re.compile(r"^(?:[A-Za-z]\.)*[A-Za-z]$")  # "J", "U.S"
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_WORD = re.compile(r"\w+")
# Words that open a phrase: a first chunk may end just before one (English only).
PHRASE_STARTS = frozenset(
    "and but or so because which who whose where when while if although though is are was were will would "
    "can could should has have had in on at of to for with from by about into than that as".split()
)
# ...but not right after one of these, which need the next word ("which | is", "the | sky")
_NO_CUT_AFTER = PHRASE_STARTS | frozenset("the a an my your his her its our their this these those not very".split())
_PHRASE_BREAK = re.compile(r"(?<=\w)([ \t]+)([A-Za-z]+)(?=[^\w])")  # the break, the next word (complete)

# Line-start markdown (matched after any indentation).
_FENCE = re.compile(r"[ \t]*(?:```|~~~)")
_RULE = re.compile(r"[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*(?:\n|$)")
_LINE_MARKER = re.compile(r"[ \t]*(?:#{1,6}[ \t]+|[-*+][ \t]+|\d{1,3}[.)][ \t]+|>[ \t]?)")
# Every character a line-start marker can contain: a line is decided once another one arrives.
_MARKER_CHARS = re.compile(r"[ \t#*+\-_>.)\d`~]*")


class MarkdownToSpeech:
    """Incremental markdown stripper: `feed` returns the newly decided speakable text."""

    def __init__(self) -> None:
        self._raw = ""  # received, not yet decided
        self._at_line_start = True
        self._in_fence = False
        self._in_link_target = 0  # parenthesis depth inside "](...)"
        self._started = False  # leading whitespace of the whole reply is dropped
        self._last_out = ""

    def feed(self, text: str) -> str:
        self._raw += text
        return self._drain(final=False)

    def finish(self) -> str:
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        out: list[str] = []
        raw, i = self._raw, 0
        while i < len(raw):
            if self._at_line_start:
                consumed = self._line_start(raw[i:], final)
                if consumed is None:
                    break  # need more text to decide
                i += consumed
                continue
            c = raw[i]
            nxt = raw[i + 1] if i + 1 < len(raw) else None
            if nxt is None and not final and c in "!]_":
                break  # these depend on the next character
            i += 1
            if self._in_link_target:
                if c == "(":
                    self._in_link_target += 1
                elif c == ")":
                    self._in_link_target -= 1
                elif c == "\n":  # not a link after all; stop skipping
                    self._in_link_target = 0
                    self._emit("\n", out)
                    self._at_line_start = True
                continue
            if c == "\n":
                self._emit("\n", out)
                self._at_line_start = True
            elif c in "*`":
                pass
            elif c == "_":
                inside_word = self._last_out[-1:].isalnum() and nxt is not None and nxt.isalnum()
                if inside_word:  # snake_case reads better as "snake case"
                    self._emit(" ", out)
            elif c == "!" and nxt == "[":
                pass  # image: keep its alt text
            elif c == "[":
                pass
            elif c == "]":
                if nxt == "(":
                    i += 1
                    self._in_link_target = 1
            else:
                self._emit(c, out)
        self._raw = raw[i:]
        return "".join(out)

    def _line_start(self, line: str, final: bool) -> int | None:
        """Characters to drop at the start of a line, or None if undecided yet."""
        end_of_line = line.find("\n")
        whole_line = end_of_line >= 0 or final
        line_len = end_of_line + 1 if end_of_line >= 0 else len(line)
        if self._in_fence:
            if not whole_line:
                return None
            if _FENCE.match(line):
                self._in_fence = False
            return line_len  # code is not read aloud
        if not whole_line and _MARKER_CHARS.match(line).end() == len(line):
            return None  # everything so far could still be part of a marker
        if _FENCE.match(line) or _RULE.match(line):
            if not whole_line:
                return None
            self._in_fence = bool(_FENCE.match(line))
            return line_len
        self._at_line_start = False
        marker = _LINE_MARKER.match(line)
        if marker:
            return marker.end()
        return len(line) - len(line.lstrip(" \t"))  # indentation

    def _emit(self, text: str, out: list[str]) -> None:
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        out.append(text)
        self._last_out = text


def speakable_text(text: str) -> str:
    """What a whole reply sounds like: markdown stripped, outer whitespace removed."""
    stripper = MarkdownToSpeech()
    return (stripper.feed(text) + stripper.finish()).rstrip()


class SpeechChunker:
    """Cuts one streamed reply into speakable chunks; make a new one per reply."""

    def __init__(self, min_first_words: int = 4, max_chars: int = 300, phrase_breaks: bool = True):
        self.min_first_words = min_first_words
        self.phrase_breaks = phrase_breaks  # False: the first chunk ends at a clause or sentence only
        self.max_chars = max_chars
        self._markdown = MarkdownToSpeech()
        self._pending = ""  # speakable text not yet released
        self._released_any = False

    def feed(self, text_delta: str) -> list[str]:
        self._pending += self._markdown.feed(text_delta)
        return self._release(final=False)

    def flush(self) -> list[str]:
        """The rest of the reply (call once, at its end)."""
        self._pending = (self._pending + self._markdown.finish()).rstrip()
        chunks = self._release(final=True)
        if self._pending:
            chunks.append(self._pending)
            self._pending = ""
        return chunks

    def _release(self, final: bool) -> list[str]:
        chunks = []
        while (cut := self._next_cut(self._pending, final)) is not None:
            chunks.append(self._pending[:cut])
            self._pending = self._pending[cut:]
            self._released_any = True
        return chunks

    def _next_cut(self, text: str, final: bool) -> int | None:
        """Where the first chunk in `text` ends, or None if no boundary is certain yet."""
        candidates = [c for c in self._boundaries(text, final) if _has_words(text[:c])]
        if candidates:
            return min(candidates)
        if len(text) > self.max_chars:
            return _fallback_cut(text, self.max_chars)
        return None

    def _boundaries(self, text: str, final: bool):
        for m in _SENTENCE_END.finditer(text):
            if m.end() == len(text) and not final:
                break  # the next word decides (lower case continues the sentence)
            if self._ends_sentence(text, m):
                yield m.end()
        for pattern in (_NEWLINE, _CJK_SENTENCE_END):
            for m in pattern.finditer(text):
                if m.end() < len(text) or final:  # a cut goes after the whole whitespace run
                    yield m.end()
        if not self._released_any:
            for m in _CLAUSE.finditer(text):
                if (m.end() < len(text) or final) and _count_words(text[:m.start()]) >= self.min_first_words:
                    yield m.end()
            for m in _PHRASE_BREAK.finditer(text) if self.phrase_breaks else ():
                before = _WORD.findall(text[:m.start()])
                if (m.group(2).lower() in PHRASE_STARTS and len(before) >= self.min_first_words
                        and before[-1].lower() not in _NO_CUT_AFTER):
                    yield m.end(1)

    @staticmethod
    def _ends_sentence(text: str, m: re.Match) -> bool:
        if "\n" in m.group(1):
            return True
        if m.end() < len(text) and text[m.end()].islower():
            return False
        if text[m.start()] != "." or text[m.start():m.start() + 2] == "..":
            return True
        word = text[:m.start()].rsplit(None, 1)[-1].lstrip("(\"'“‘") if text[:m.start()].strip() else ""
        return not (word.lower() in ABBREVIATIONS or _INITIALISM.match(word))


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _count_words(text: str) -> int:
    return len(_WORD.findall(_CJK_CHAR.sub(" ", text))) + len(_CJK_CHAR.findall(text))


def _fallback_cut(text: str, max_chars: int) -> int:
    """A cut at or before max_chars: after the last clause mark, else after the last space."""
    head = text[:max_chars]
    clauses = [m.end() for m in _CLAUSE.finditer(head) if m.end() < len(head)]
    if clauses:
        return clauses[-1]
    space = head.rstrip().rfind(" ")
    return space + 1 if space > 0 else max_chars

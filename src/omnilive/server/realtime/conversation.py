"""The conversation of one Realtime session: items in order, and how they become engine messages.

    conversation.add(item, previous_item_id=None)    # None = at the end
    messages = await conversation.messages(instructions)

A user audio item carries its transcript as a future: the turn is committed at once and its
transcript arrives a moment later, so a response waits for it only when it builds its prompt.
Webcam frames arrive as image-only user items; only the latest few before a turn are shown
to the model with it (older frames' pixels are dropped, the items stay).

A function call is an item of its own (type "function_call"), as is the result the client
sends back ("function_call_output"); to the engine they are an assistant message's
`tool_calls` and a `tool` message answering one of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Literal

from omnilive.types import SPEECH_SAMPLE_RATE, ContentPart, ImageInput, Message, ToolCall
from omnilive.server.realtime.events import Dialect, ItemIn, RealtimeError

ContentKind = Literal["input_text", "input_audio", "input_image", "output_text", "output_audio"]
FRAMES_PER_TURN = 2  # latest webcam frames shown with a turn; each costs OCR time in the prompt


@dataclass
class Content:
    kind: ContentKind
    text: str = ""  # input_text, output_text; the transcript of input_audio and output_audio
    image: ImageInput | None = None
    transcript: asyncio.Future | None = None  # input_audio: done once `text` holds its transcript
    transcribed: bool = True  # input_audio: False until the transcript is known (shown as null)
    audio_samples: int = 0  # output_audio: 24 kHz samples sent so far
    spoken: list[tuple[int, str]] = field(default_factory=list)  # output_audio: (start sample, text)

    @property
    def audio_ms(self) -> int:
        return self.audio_samples * 1000 // SPEECH_SAMPLE_RATE


ItemType = Literal["message", "function_call", "function_call_output"]


@dataclass(eq=False)  # an item is itself: two with equal fields are still two items
class Item:
    id: str
    role: Literal["user", "assistant", "system", "tool"]  # function_call: assistant; its output: tool
    content: list[Content]
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    type: ItemType = "message"
    call_id: str = ""  # function_call, function_call_output: the call
    name: str = ""  # function_call: the function
    arguments: str = ""  # function_call: JSON text (grows while the model writes it)
    output: str = ""  # function_call_output: the result, as the client gave it

    @property
    def images_only(self) -> bool:
        return self.role == "user" and bool(self.content) and all(c.kind == "input_image" for c in self.content)

    @staticmethod
    def function_call(item_id: str, call_id: str, name: str, arguments: str = "",
                      status: Literal["completed", "incomplete", "in_progress"] = "completed") -> Item:
        return Item(item_id, "assistant", [], status, "function_call", call_id, name, arguments)

    @staticmethod
    def function_call_output(item_id: str, call_id: str, output: str) -> Item:
        return Item(item_id, "tool", [], type="function_call_output", call_id=call_id, output=output)

    def wire(self, dialect: Dialect) -> dict:
        """The item as events show it (audio and image bytes are not echoed)."""
        head = {"id": self.id, "object": "realtime.item", "type": self.type, "status": self.status}
        if self.type == "function_call":
            return {**head, "call_id": self.call_id, "name": self.name, "arguments": self.arguments}
        if self.type == "function_call_output":
            return {**head, "call_id": self.call_id, "output": self.output}
        return {**head, "role": self.role, "content": [_content_wire(c, dialect) for c in self.content]}


def _content_wire(content: Content, dialect: Dialect) -> dict:
    if content.kind == "input_audio":
        return {"type": "input_audio", "transcript": content.text if content.transcribed else None}
    if content.kind == "input_image":
        return {"type": "input_image"}
    if content.kind in ("output_audio", "output_text"):
        audio = content.kind == "output_audio"
        key = "transcript" if audio else "text"
        return {"type": dialect.output_content(audio), key: content.text}
    return {"type": "input_text", "text": content.text}


class Conversation:
    def __init__(self) -> None:
        self.items: list[Item] = []

    def find(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise RealtimeError(f"Item with item_id '{item_id}' not found.", "item_not_found", "item_id")

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert `item` after `previous_item_id` ("root" = first, None = last); returns its predecessor's id."""
        if any(existing.id == item.id for existing in self.items):
            raise RealtimeError(f"Item with id '{item.id}' already exists.", "duplicate_item_id", "item.id")
        if previous_item_id is None:
            index = len(self.items)
        elif previous_item_id == "root":
            index = 0
        else:
            index = self.items.index(self.find(previous_item_id)) + 1
        self.items.insert(index, item)
        if item.images_only:
            self._forget_old_frames()
        return self.items[index - 1].id if index > 0 else None

    def function_call(self, call_id: str) -> Item:
        """The function_call item of `call_id` (what a function_call_output answers)."""
        for item in self.items:
            if item.type == "function_call" and item.call_id == call_id:
                return item
        raise RealtimeError(f"No function call with call_id '{call_id}' is in the conversation.", "invalid_value",
                            "item.call_id")

    def call_item(self, item_id: str, source: ItemIn) -> Item:
        """A function_call or function_call_output item the client sends (not yet added)."""
        if source.type == "function_call":
            return Item.function_call(item_id, source.call_id, source.name, source.arguments or "")
        self.function_call(source.call_id)  # an output answers a call the conversation holds
        return Item.function_call_output(item_id, source.call_id, source.output)

    def delete(self, item_id: str) -> None:
        self.items.remove(self.find(item_id))

    def _forget_old_frames(self) -> None:
        """Keep pixels only for the latest frames of the run of image-only items at the end."""
        run: list[Item] = []
        for item in reversed(self.items):
            if not item.images_only:
                break
            run.append(item)
        for old in run[FRAMES_PER_TURN:]:
            for content in old.content:
                content.image = None

    async def messages(self, instructions: str, items: list[Item] | None = None) -> tuple[Message, ...]:
        """Engine messages for `items` (default: all); consecutive user items become one turn."""
        messages: list[Message] = [Message("system", (instructions,))] if instructions.strip() else []
        for item in self.items if items is None else items:
            if item.type == "function_call":  # calls made together (or after words) are one assistant turn
                call = ToolCall(item.call_id, item.name, item.arguments)
                if messages and messages[-1].role == "assistant":
                    messages[-1] = replace(messages[-1], tool_calls=messages[-1].tool_calls + (call,))
                else:
                    messages.append(Message("assistant", (), tool_calls=(call,)))
                continue
            if item.type == "function_call_output":
                messages.append(Message("tool", (item.output,), tool_call_id=item.call_id))
                continue
            parts = tuple([p for c in item.content for p in await _engine_parts(c)])
            if not parts:
                continue  # a cancelled reply that said nothing, or frames forgotten
            if messages and messages[-1].role == item.role == "user":
                messages[-1] = Message("user", messages[-1].content + parts)
            else:
                messages.append(Message(item.role, parts))
        return tuple(messages)


async def _engine_parts(content: Content) -> list[ContentPart]:
    if content.kind == "input_image":
        return [content.image] if content.image is not None else []
    if content.kind == "input_audio" and content.transcript is not None:
        await asyncio.shield(content.transcript)  # the user's words, once recognised
    return [content.text] if content.text.strip() else []


def truncate_spoken(content: Content, audio_end_ms: int) -> None:
    """Cut an assistant audio part to what was heard: its audio and its transcript."""
    if audio_end_ms > content.audio_ms:
        raise RealtimeError(
            f"audio_end_ms {audio_end_ms} is longer than the item's audio ({content.audio_ms} ms).",
            "invalid_value",
            "audio_end_ms",
        )
    end_sample = audio_end_ms * SPEECH_SAMPLE_RATE // 1000
    text = ""
    for index, (start, piece) in enumerate(content.spoken):
        stop = content.spoken[index + 1][0] if index + 1 < len(content.spoken) else content.audio_samples
        if end_sample >= stop:
            text += piece
        elif end_sample > start:  # partly heard: keep the share of its words that was played
            words = piece.split()
            text += " ".join(words[: round(len(words) * (end_sample - start) / (stop - start))])
    content.text = text.rstrip()
    content.audio_samples = end_sample
    content.spoken = [(start, piece) for start, piece in content.spoken if start < end_sample]

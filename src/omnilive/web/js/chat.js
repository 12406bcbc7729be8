// Text chat over /v1/chat/completions: the conversation as OpenAI messages (attachments as
// content parts), and one streamed reply read delta by delta.

import { apiFetch, readEvents } from "./api.js";
import { mediaDataUrl } from "./history.js";

const AUDIO_FORMATS = {
  "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
  "audio/mpeg": "mp3", "audio/mp3": "mp3",
  "audio/flac": "flac", "audio/x-flac": "flac",
  "audio/ogg": "ogg", "audio/webm": "webm",
  "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/m4a": "m4a", "audio/aac": "aac",
};

// history: [{ role, content, media: [{ id, kind, mime_type, dataUrl? }] }] → API messages
export async function toApiMessages(history, systemPrompt) {
  const messages = systemPrompt.trim() ? [{ role: "system", content: systemPrompt.trim() }] : [];
  for (const message of history) {
    if (message.role === "assistant") {
      messages.push({ role: "assistant", content: message.content });
    } else if (!message.media || !message.media.length) {
      messages.push({ role: message.role, content: message.content });
    } else {
      const parts = await Promise.all(message.media.map(contentPart));
      if (message.content) parts.push({ type: "text", text: message.content });
      messages.push({ role: message.role, content: parts });
    }
  }
  return messages;
}

async function contentPart(media) {
  const url = media.dataUrl || (media.dataUrl = await mediaDataUrl(media.id));
  if (media.kind === "image") return { type: "image_url", image_url: { url } };
  if (media.kind === "video") return { type: "video_url", video_url: { url } };
  const format = AUDIO_FORMATS[media.mime_type.split(";")[0]];
  if (format) return { type: "input_audio", input_audio: { data: url.slice(url.indexOf(",") + 1), format } };
  return { type: "audio_url", audio_url: { url } };
}

// Stream one reply. Handlers get the text so far (onText, onReasoning) and audio chunks
// (onAudio: base64 PCM16 24 kHz). Resolves with { content, reasoning, finishReason, usage }.
export async function streamChat({ body, signal, onText, onReasoning, onAudio }) {
  const response = await apiFetch("/v1/chat/completions", {
    method: "POST",
    json: { ...body, stream: true, stream_options: { include_usage: true } },
    signal,
  });
  let content = "";
  let reasoning = "";
  let finishReason = null;
  let usage = null;
  for await (const chunk of readEvents(response)) {
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) continue;
    const delta = choice.delta || {};
    if (delta.reasoning_content) {
      reasoning += delta.reasoning_content;
      onReasoning(reasoning);
    }
    if (delta.content) {
      content += delta.content;
      onText(content);
    }
    if (delta.audio && delta.audio.data) onAudio(delta.audio.data);
    if (choice.finish_reason) finishReason = choice.finish_reason;
  }
  return { content, reasoning, finishReason, usage };
}

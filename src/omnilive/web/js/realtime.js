// Voice and video chat over the Realtime API (/v1/realtime, OpenAI's WebSocket protocol).
//
//   mic → AudioWorklet (PCM16 24 kHz) → input_audio_buffer.append ─┐
//   camera → a JPEG frame every ~1 s while the user speaks ────────┤→ server (VAD, ASR, LLM, TTS)
//   response.output_audio.delta → PcmPlayer;  transcripts → callbacks ←┘
//
// Barge-in: when the server hears speech (input_audio_buffer.speech_started) while a reply is
// playing, or still coming (a pause between its clauses), playback stops and
// conversation.item.truncate tells the server how much was heard.
//
// Function calls (a session given tools): each function_call item and the function_call_output
// answering it are reported as they join the conversation, the arguments as they stream.

import { apiKey, base64FromBytes } from "./api.js";

const FRAME_INTERVAL_MS = 1000;
const FRAME_MAX_SIDE = 640;

export class LiveSession {
  // callbacks: onState(state), onUserSpeech(itemId), onUserTranscript(itemId, text),
  // onAssistantDelta(itemId, text), onAssistantDone(itemId, text), onBargeIn({ itemId, playedMs }),
  // onFrame(count), onError(message), onToolCall({ itemId, callId, name, args }),
  // onToolArguments(itemId, args), onToolResult(callId, output)
  constructor({ model, voice, instructions, temperature, video, player, videoElement, callbacks }) {
    Object.assign(this, { model, voice, instructions, temperature, video, player, videoElement });
    this.on = callbacks;
    this.muted = false;
    this.framesSent = 0;
    this.ws = null;
    this.stream = null;
    this.context = null;
    this.frameTimer = null;
    this.userSpeaking = false;
    this.closedByUs = false;
    this.replyItemId = null; // the reply whose audio is still coming, until its response.done
    this.cutItemIds = new Set(); // replies the user talked over: their audio still in flight is dropped
    this.assistantText = new Map(); // item id → transcript so far
    this.callArguments = new Map(); // function_call item id → arguments so far
  }

  async start() {
    this.on.onState("connecting");
    this.stream = await openMedia(this.video);
    if (this.video) {
      this.videoElement.srcObject = this.stream;
      await this.videoElement.play().catch(() => {});
    }
    await this.startCapture();
    await this.connect();
  }

  async startCapture() {
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    const microphone = this.context.createMediaStreamSource(new MediaStream(this.stream.getAudioTracks()));
    const capture = new AudioWorkletNode(this.context, "pcm16-capture");
    capture.port.onmessage = (event) => this.sendAudio(new Int16Array(event.data));
    microphone.connect(capture);
    // a worklet only runs while connected to the graph's output; it writes nothing to it
    capture.connect(this.context.destination);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/realtime?model=${encodeURIComponent(this.model)}`;
    // a browser WebSocket cannot send headers: the key travels as OpenAI's subprotocol
    const key = apiKey();
    this.ws = key ? new WebSocket(url, ["realtime", `openai-insecure-api-key.${key}`]) : new WebSocket(url);
    return new Promise((resolve, reject) => {
      this.ws.onopen = () => {
        this.send({ type: "session.update", session: this.sessionConfig() });
        this.on.onState("listening");
        resolve();
      };
      this.ws.onmessage = (event) => this.handle(JSON.parse(event.data));
      this.ws.onclose = (event) => {
        if (this.closedByUs) return;
        const reason =
          event.code === 1008
            ? "The server refused the voice connection: check the API key in Settings."
            : `The voice connection closed (${event.code}${event.reason ? ": " + event.reason : ""}).`;
        this.on.onError(reason);
        this.stop();
        reject(new Error(reason));
      };
    });
  }

  sessionConfig() {
    const pcm = { type: "audio/pcm", rate: 24000 };
    return {
      type: "realtime",
      model: this.model,
      instructions: this.instructions || undefined,
      temperature: this.temperature,
      output_modalities: ["audio"],
      audio: {
        input: {
          format: pcm,
          transcription: { model: "whisper-1" },
          turn_detection: { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 },
        },
        output: { format: pcm, voice: this.voice || undefined },
      },
    };
  }

  send(event) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event));
  }

  sendAudio(samples) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    // muted: keep time flowing with silence, so the server's VAD can still end a turn
    if (this.muted) samples.fill(0);
    this.send({ type: "input_audio_buffer.append", audio: base64FromBytes(new Uint8Array(samples.buffer)) });
  }

  setMuted(muted) {
    this.muted = muted;
  }

  handle(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.userSpeaking = true;
        this.bargeIn();
        this.on.onUserSpeech(event.item_id);
        this.on.onState("user-speaking");
        if (this.video) this.startFrames();
        break;
      case "input_audio_buffer.speech_stopped":
        this.userSpeaking = false;
        this.stopFrames();
        this.on.onState("thinking");
        break;
      case "conversation.item.input_audio_transcription.completed":
        this.on.onUserTranscript(event.item_id, event.transcript || "");
        break;
      case "response.output_audio.delta":
      case "response.audio.delta":
        if (this.cutItemIds.has(event.item_id)) break; // sent before the server heard the barge-in
        this.player.enqueue(event.delta, event.item_id);
        this.replyItemId = event.item_id;
        this.on.onState("assistant-speaking");
        break;
      case "response.output_audio_transcript.delta":
      case "response.audio_transcript.delta":
      case "response.output_text.delta":
      case "response.text.delta": {
        const text = (this.assistantText.get(event.item_id) || "") + event.delta;
        this.assistantText.set(event.item_id, text);
        this.on.onAssistantDelta(event.item_id, text);
        break;
      }
      case "conversation.item.added":
      case "conversation.item.created":
        this.itemAdded(event.item || {});
        break;
      case "response.function_call_arguments.delta": {
        const args = (this.callArguments.get(event.item_id) || "") + event.delta;
        this.callArguments.set(event.item_id, args);
        this.on.onToolArguments(event.item_id, args);
        break;
      }
      case "response.function_call_arguments.done":
        this.callArguments.delete(event.item_id);
        this.on.onToolArguments(event.item_id, event.arguments);
        break;
      case "response.done":
        this.replyItemId = null;
        for (const [itemId, text] of this.assistantText) this.on.onAssistantDone(itemId, text);
        this.assistantText.clear();
        if (event.response && event.response.status === "failed") {
          const error = event.response.status_details && event.response.status_details.error;
          this.on.onError(error && error.message ? error.message : "The reply failed.");
        }
        if (!this.userSpeaking) this.on.onState(this.player.playing ? "assistant-speaking" : "listening");
        break;
      case "error":
        this.on.onError((event.error && event.error.message) || "The voice server reported an error.");
        break;
      default:
        break;
    }
  }

  itemAdded(item) {
    if (item.type === "function_call") {
      this.on.onToolCall({ itemId: item.id, callId: item.call_id, name: item.name, args: item.arguments || "" });
    } else if (item.type === "function_call_output") {
      this.on.onToolResult(item.call_id, item.output);
    }
  }

  // The user talks over the reply: stop it where it is and tell the server what was heard.
  // Between two clauses nothing plays, but the server still cancels the reply: it is cut all the same.
  bargeIn() {
    const between = this.replyItemId && { itemId: this.replyItemId, playedMs: this.player.playedMsOf(this.replyItemId) };
    const cut = this.player.stop() || between;
    if (cut && cut.itemId) {
      this.cutItemIds.add(cut.itemId);
      this.replyItemId = null;
      this.send({ type: "conversation.item.truncate", item_id: cut.itemId, content_index: 0, audio_end_ms: cut.playedMs });
      this.on.onBargeIn(cut);
    }
  }

  startFrames() {
    if (this.frameTimer) return;
    this.sendFrame();
    this.frameTimer = setInterval(() => this.sendFrame(), FRAME_INTERVAL_MS);
  }

  stopFrames() {
    clearInterval(this.frameTimer);
    this.frameTimer = null;
  }

  sendFrame() {
    const video = this.videoElement;
    if (!video.videoWidth) return;
    const scale = Math.min(1, FRAME_MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const imageUrl = canvas.toDataURL("image/jpeg", 0.8);
    this.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_image", image_url: imageUrl }] },
    });
    this.framesSent += 1;
    this.on.onFrame(this.framesSent);
  }

  stop() {
    this.closedByUs = true;
    this.stopFrames();
    this.player.stop();
    if (this.ws) this.ws.close();
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.context) this.context.close();
    if (this.videoElement) this.videoElement.srcObject = null;
    this.ws = this.stream = this.context = null;
    this.on.onState("idle");
  }
}

async function openMedia(video) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("This browser cannot use a microphone here (the page must be served over HTTPS or from localhost).");
  }
  // echo cancellation keeps the reply's own sound from triggering barge-in; noise suppression
  // is off because it smears consonants and costs the speech recogniser words
  const audio = { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true };
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video: video ? { width: 640, height: 480 } : false });
  } catch (err) {
    const device = video ? "camera and microphone" : "microphone";
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      throw new Error(`Access to the ${device} was denied. Allow it in the browser's site settings, then try again.`);
    }
    if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      throw new Error(`No ${device} was found. Connect one and try again.`);
    }
    if (err.name === "NotReadableError") {
      throw new Error(`The ${device} is in use by another application.`);
    }
    throw new Error(`Could not open the ${device}: ${err.message}`);
  }
}

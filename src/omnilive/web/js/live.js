// The voice / video panel: starts and ends a LiveSession, shows its state (listening, you are
// speaking, thinking, replying), both sides' transcripts and any function calls (with their
// results) as messages in the chat, and hands each finished turn to the app so it is saved in
// the conversation history (calls are not: the history holds text turns).

import { LiveSession } from "./realtime.js";

const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  listening: "Listening — just speak",
  "user-speaking": "Hearing you…",
  thinking: "Thinking…",
  "assistant-speaking": "Speaking — talk to interrupt",
};

export class LiveController {
  // app: { root, messages, player, settings(), model(), ensureConversation(), recordTurn(message), showError(msg) }
  constructor(app) {
    this.app = app;
    this.session = null;
    this.video = false;
    this.views = new Map(); // realtime item id → MessageView
    this.calls = new Map(); // function_call item id → ToolCallView
    this.panel = document.getElementById("live-panel");
    this.status = document.getElementById("live-status");
    this.camera = document.getElementById("camera-preview");
    this.startButton = document.getElementById("live-start");
    this.muteButton = document.getElementById("live-mute");
    this.stopButton = document.getElementById("live-stop");
    this.startButton.addEventListener("click", () => this.start());
    this.stopButton.addEventListener("click", () => this.stop());
    this.muteButton.addEventListener("click", () => this.toggleMute());
  }

  show(video) {
    if (this.session && this.video !== video) this.stop();
    this.video = video;
    this.panel.hidden = false;
    this.panel.classList.toggle("with-video", video);
    this.startButton.textContent = video ? "Start video chat" : "Start voice chat";
    this.startButton.focus();
  }

  hide() {
    this.stop();
    this.panel.hidden = true;
  }

  async start() {
    if (this.session) return;
    this.startButton.disabled = true;
    try {
      await this.app.player.unlock();
      await this.app.ensureConversation();
      const settings = this.app.settings();
      this.session = new LiveSession({
        model: this.app.model(),
        voice: settings.voice,
        instructions: settings.systemPrompt,
        temperature: settings.temperature,
        video: this.video,
        player: this.app.player,
        videoElement: this.camera,
        callbacks: this.callbacks(),
      });
      await this.session.start();
      this.startButton.hidden = true;
      this.muteButton.disabled = false;
      this.stopButton.disabled = false;
      this.stopButton.focus();
    } catch (err) {
      this.app.showError(err.message);
      this.stop();
    }
  }

  stop() {
    const session = this.session;
    this.session = null;
    if (session) session.stop();
    this.views.clear();
    this.calls.clear();
    this.setMuted(false);
    this.startButton.disabled = false;
    this.startButton.hidden = false;
    this.muteButton.disabled = true;
    this.stopButton.disabled = true;
    this.setState("idle");
  }

  // the reply has been heard to its end: back to listening
  playbackEnded() {
    if (this.session && this.app.root.dataset.liveState === "assistant-speaking") this.setState("listening");
  }

  toggleMute() {
    this.setMuted(!this.muted);
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.session) this.session.setMuted(muted);
    this.muteButton.setAttribute("aria-pressed", String(muted));
    this.muteButton.textContent = muted ? "Unmute" : "Mute";
    this.app.root.dataset.muted = String(muted);
    this.setState(this.app.root.dataset.liveState || "idle"); // the status line says "(muted)"
  }

  setState(state) {
    this.app.root.dataset.liveState = state;
    this.status.textContent = this.muted && state !== "idle" ? `${STATE_TEXT[state]} (muted)` : STATE_TEXT[state];
  }

  view(itemId, role) {
    if (!this.views.has(itemId)) {
      const view = this.app.messages.add({ role, source: "voice" });
      view.setPending(true);
      this.views.set(itemId, view);
    }
    return this.views.get(itemId);
  }

  callbacks() {
    return {
      onState: (state) => {
        if (state === "idle" && this.session) this.stop(); // the connection ended on its own
        else this.setState(state);
      },
      onUserSpeech: (itemId) => {
        if (itemId) this.view(itemId, "user").setContent("…");
      },
      onUserTranscript: (itemId, text) => {
        const view = this.view(itemId, "user");
        view.setPending(false);
        view.setContent(text || "(nothing recognised)");
        if (text.trim()) this.app.recordTurn({ role: "user", content: text.trim() });
      },
      onAssistantDelta: (itemId, text) => this.view(itemId, "assistant").setContent(text),
      onAssistantDone: (itemId, text) => {
        const view = this.view(itemId, "assistant");
        view.setPending(false);
        if (text.trim()) this.app.recordTurn({ role: "assistant", content: text.trim() });
      },
      onBargeIn: ({ itemId, playedMs }) => {
        const root = this.app.root;
        root.dataset.bargeIns = String(Number(root.dataset.bargeIns || 0) + 1);
        const view = this.views.get(itemId);
        if (view) view.setStatus(`Interrupted after ${(playedMs / 1000).toFixed(1)} s.`);
      },
      onToolCall: ({ itemId, callId, name, args }) => {
        if (!this.calls.has(itemId)) this.calls.set(itemId, this.app.messages.addToolCall({ name, callId, args }));
      },
      onToolArguments: (itemId, args) => this.calls.get(itemId)?.setArguments(args),
      onToolResult: (callId, output) => {
        for (const view of this.calls.values()) if (view.callId === callId) view.setResult(output);
      },
      onFrame: (count) => (this.app.root.dataset.framesSent = String(count)),
      onError: (message) => this.app.showError(message),
    };
  }
}

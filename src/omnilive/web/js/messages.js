// The message list: user and assistant bubbles, replies rendered as Markdown while they stream,
// reasoning folded away in a <details>, attachments shown as previews, and the model's function
// calls folded as "Called name({...})" with their arguments and result inside.

import { mediaPreview } from "./attachments.js";
import { renderMarkdown } from "./markdown.js";

const ROLE_LABEL = { user: "You", assistant: "Assistant", system: "System" };

export class MessageList {
  constructor(container) {
    this.container = container;
  }

  clear() {
    this.container.replaceChildren();
  }

  showWelcome() {
    const welcome = document.createElement("div");
    welcome.className = "welcome";
    welcome.innerHTML =
      "<h2>How can I help?</h2><p>Type a message, attach an image, audio or video file, " +
      "or switch to <strong>Voice</strong> or <strong>Video</strong> to talk.</p>";
    this.container.replaceChildren(welcome);
  }

  // media: [{ kind, url, filename }] (url may be a Promise of one)
  add({ role, content = "", reasoning = "", media = [], source = "text" }) {
    const view = new MessageView(role, source);
    for (const item of media) view.addMedia(item);
    view.setReasoning(reasoning);
    view.setContent(content);
    return this.append(view);
  }

  addToolCall({ name, callId, args = "" }) {
    const view = new ToolCallView(name, callId);
    view.setArguments(args);
    return this.append(view);
  }

  append(view) {
    this.container.querySelector(".welcome")?.remove();
    const stick = this.nearBottom();
    this.container.append(view.element);
    if (stick) this.scrollToEnd();
    view.onResize = () => this.keepAtEnd();
    return view;
  }

  nearBottom() {
    const c = this.container;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  }

  scrollToEnd() {
    this.container.scrollTop = this.container.scrollHeight;
  }

  keepAtEnd() {
    if (this.nearBottom()) this.scrollToEnd();
  }
}

export class MessageView {
  constructor(role, source) {
    this.role = role;
    this.content = "";
    this.reasoning = "";
    this.frame = 0;
    this.onResize = () => {};
    this.element = document.createElement("article");
    this.element.className = `message ${role}`;
    this.element.dataset.role = role;
    this.element.dataset.source = source; // text | voice
    const label = document.createElement("div");
    label.className = "message-role";
    label.textContent = ROLE_LABEL[role] || role;
    this.mediaBox = document.createElement("div");
    this.mediaBox.className = "message-media";
    this.reasoningBox = document.createElement("details");
    this.reasoningBox.className = "reasoning";
    this.reasoningBox.innerHTML = "<summary>Thinking</summary><div class=\"reasoning-text\"></div>";
    this.reasoningBox.hidden = true;
    this.body = document.createElement("div");
    this.body.className = "message-body";
    this.status = document.createElement("div");
    this.status.className = "message-status";
    this.status.hidden = true;
    this.element.append(label, this.mediaBox, this.reasoningBox, this.body, this.status);
  }

  addMedia({ kind, url, filename }) {
    const slot = document.createElement("div");
    slot.className = "message-media-item";
    this.mediaBox.append(slot);
    Promise.resolve(url)
      .then((resolved) => slot.append(mediaPreview(kind, resolved, filename)))
      .catch(() => (slot.textContent = `(${filename || kind} is no longer available)`));
  }

  setContent(text) {
    this.content = text;
    this.schedule();
  }

  setReasoning(text) {
    this.reasoning = text || "";
    this.schedule();
  }

  // after the reply: how long it thought, against the budget the request set (if any)
  setThinkingUsage(tokens, budget) {
    const summary = this.reasoningBox.querySelector("summary");
    summary.textContent = `Thought for ${tokens} tokens` + (budget !== undefined ? ` (budget ${budget})` : "");
  }

  setPending(pending) {
    this.element.classList.toggle("pending", pending);
  }

  setStatus(text, kind = "note") {
    this.status.hidden = !text;
    this.status.textContent = text || "";
    this.status.dataset.kind = kind;
  }

  // one render per animation frame, however many deltas arrive in between
  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render() {
    if (this.role === "assistant") {
      this.body.innerHTML = renderMarkdown(this.content);
    } else {
      this.body.textContent = this.content; // white-space: pre-wrap keeps the user's line breaks
    }
    this.reasoningBox.hidden = !this.reasoning;
    this.reasoningBox.querySelector(".reasoning-text").textContent = this.reasoning;
    this.onResize();
  }
}

// A function call the model made. Folded, it reads as the call itself; open, it shows the
// arguments and the result the client sent back (JSON pretty-printed, anything else as is).
export class ToolCallView {
  constructor(name, callId) {
    this.name = name;
    this.callId = callId;
    this.arguments = "";
    this.result = null;
    this.onResize = () => {};
    this.element = document.createElement("article");
    this.element.className = "message tool-call";
    this.element.dataset.role = "tool";
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    this.call = document.createElement("code");
    summary.append("Called ", this.call);
    this.argumentsText = document.createElement("pre");
    this.resultText = document.createElement("pre");
    this.resultText.className = "tool-call-result";
    details.append(summary, part("Arguments", this.argumentsText), part("Result", this.resultText));
    this.element.append(details);
  }

  setArguments(text) {
    this.arguments = text || "";
    this.render();
  }

  setResult(text) {
    this.result = text;
    this.render();
  }

  render() {
    this.call.textContent = `${this.name}(${compactJson(this.arguments)})`;
    this.argumentsText.textContent = prettyJson(this.arguments);
    this.resultText.textContent = this.result === null ? "Waiting for the result…" : prettyJson(this.result);
    this.element.dataset.state = this.result === null ? "called" : "answered";
    this.onResize();
  }
}

function part(heading, body) {
  const box = document.createElement("div");
  box.className = "tool-call-part";
  const label = document.createElement("div");
  label.className = "tool-call-heading";
  label.textContent = heading;
  box.append(label, body);
  return box;
}

// arguments still streaming are not JSON yet: shown as they are
function compactJson(text) {
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return text;
  }
}

function prettyJson(text) {
  try {
    const value = JSON.parse(text);
    return typeof value === "object" && value !== null ? JSON.stringify(value, null, 2) : text;
  } catch {
    return text;
  }
}

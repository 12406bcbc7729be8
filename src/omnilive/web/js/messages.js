// The message list: user and assistant bubbles, replies rendered as Markdown while they stream,
// reasoning folded away in a <details>, attachments shown as previews.

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
    this.container.querySelector(".welcome")?.remove();
    const view = new MessageView(role, source);
    for (const item of media) view.addMedia(item);
    view.setReasoning(reasoning);
    view.setContent(content);
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

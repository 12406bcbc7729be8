// The conversation list in the sidebar, backed by /v1/history on the server, so chats are
// there after a reload, on another device, and after a server restart.

import { apiFetch, apiJson, blobToDataUrl } from "./api.js";
import { ICONS } from "./icons.js";

export const historyApi = {
  list: () => apiJson("/v1/history/conversations?limit=200"),
  create: (settings) => apiJson("/v1/history/conversations", { method: "POST", json: { settings } }),
  get: (id) => apiJson(`/v1/history/conversations/${encodeURIComponent(id)}`),
  rename: (id, title) => apiJson(`/v1/history/conversations/${encodeURIComponent(id)}`, { method: "PATCH", json: { title } }),
  remove: (id) => apiJson(`/v1/history/conversations/${encodeURIComponent(id)}`, { method: "DELETE" }),
  append: (id, message) =>
    apiJson(`/v1/history/conversations/${encodeURIComponent(id)}/messages`, { method: "POST", json: message }),
};

// Media is fetched with the API key (an <img src> could not send it) and kept as blob URLs.
const blobs = new Map(); // media id → Promise<Blob>

function mediaBlob(id) {
  if (!blobs.has(id)) {
    const pending = apiFetch(`/v1/history/media/${id}`).then((response) => response.blob());
    pending.catch(() => blobs.delete(id));
    blobs.set(id, pending);
  }
  return blobs.get(id);
}

export async function mediaObjectUrl(id) {
  return URL.createObjectURL(await mediaBlob(id));
}

export async function mediaDataUrl(id) {
  return blobToDataUrl(await mediaBlob(id));
}

export class Sidebar {
  // callbacks: onOpen(id), onDeleted(id), onRenamed(id, title), onError(message)
  constructor({ list, callbacks }) {
    this.list = list;
    this.on = callbacks;
    this.conversations = [];
    this.activeId = null;
  }

  async refresh() {
    try {
      this.conversations = (await historyApi.list()).data;
    } catch (err) {
      this.on.onError(`Could not load the conversation list: ${err.message}`);
      return;
    }
    this.render();
  }

  setActive(id) {
    this.activeId = id;
    for (const row of this.list.children) row.classList.toggle("active", row.dataset.id === id);
    const active = this.list.querySelector(".conversation.active .conversation-open");
    if (active) active.setAttribute("aria-current", "page");
  }

  render() {
    if (!this.conversations.length) {
      const empty = document.createElement("li");
      empty.className = "conversation-empty";
      empty.textContent = "No conversations yet.";
      this.list.replaceChildren(empty);
      return;
    }
    this.list.replaceChildren(...this.conversations.map((conversation) => this.row(conversation)));
    this.setActive(this.activeId);
  }

  row(conversation) {
    const row = document.createElement("li");
    row.className = "conversation";
    row.dataset.id = conversation.id;
    const title = conversation.title || "New chat";

    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation-open";
    open.textContent = title;
    open.title = title;
    open.addEventListener("click", () => this.on.onOpen(conversation.id));

    const rename = smallButton(ICONS.pencil, `Rename "${title}"`, "conversation-rename");
    rename.addEventListener("click", () => this.startRename(row, conversation));

    const remove = smallButton(ICONS.trash, `Delete "${title}"`, "conversation-delete");
    remove.addEventListener("click", () => this.confirmDelete(remove, conversation));

    row.append(open, rename, remove);
    return row;
  }

  startRename(row, conversation) {
    const input = document.createElement("input");
    input.type = "text";
    input.className = "conversation-title-input";
    input.value = conversation.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        try {
          await historyApi.rename(conversation.id, title);
          conversation.title = title;
          this.on.onRenamed(conversation.id, title);
        } catch (err) {
          this.on.onError(`Could not rename the conversation: ${err.message}`);
        }
      }
      this.render();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    row.replaceChildren(input);
    input.focus();
    input.select();
  }

  // First click arms the button, a second click within a few seconds deletes.
  async confirmDelete(button, conversation) {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = "Delete?";
      button.setAttribute("aria-label", `Click again to delete "${conversation.title || "New chat"}"`);
      setTimeout(() => this.render(), 4000);
      return;
    }
    try {
      await historyApi.remove(conversation.id);
    } catch (err) {
      this.on.onError(`Could not delete the conversation: ${err.message}`);
      return;
    }
    this.conversations = this.conversations.filter((c) => c.id !== conversation.id);
    this.render();
    this.on.onDeleted(conversation.id);
  }
}

function smallButton(icon, label, className) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `icon-button ${className}`;
  button.innerHTML = icon; // a constant from icons.js
  button.setAttribute("aria-label", label);
  button.title = label;
  return button;
}

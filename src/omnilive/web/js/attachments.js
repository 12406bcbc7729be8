// Files the user is about to send: from the picker, drag and drop, or paste. Each one is
// uploaded to the history store right away (so a file that is too large is refused at once,
// with the server's own message) and shown as a preview chip until it is sent or removed.

import { ApiError, apiJson, blobToDataUrl, describeError } from "./api.js";
import { ICONS } from "./icons.js";

const KINDS = ["image", "audio", "video"];

export function kindOf(mimeType) {
  const major = (mimeType || "").split("/")[0];
  return KINDS.includes(major) ? major : "file";
}

export class AttachmentTray {
  constructor({ element, onError, onChange = () => {} }) {
    this.element = element;
    this.onError = onError;
    this.onChange = onChange;
    this.items = []; // { key, file, kind, previewUrl, media (server's record) | null, status }
    this.nextKey = 1;
  }

  add(files) {
    for (const file of files) {
      const kind = kindOf(file.type);
      if (kind === "file") {
        this.onError(`"${file.name}" is not an image, audio or video file, so it cannot be sent.`);
        continue;
      }
      const item = { key: this.nextKey++, file, kind, previewUrl: URL.createObjectURL(file), media: null, status: "uploading" };
      this.items.push(item);
      this.upload(item);
    }
    this.render();
  }

  async upload(item) {
    const form = new FormData();
    form.append("file", item.file, item.file.name || `${item.kind}`);
    try {
      item.media = await apiJson("/v1/history/media", { method: "POST", body: form });
      item.status = "ready";
    } catch (err) {
      this.remove(item.key);
      const reason = err instanceof ApiError && err.code === "file_too_large" ? err.message : describeError(err);
      this.onError(`Could not attach "${item.file.name}": ${reason}`);
      return;
    }
    this.render();
  }

  remove(key) {
    const item = this.items.find((candidate) => candidate.key === key);
    if (!item) return;
    URL.revokeObjectURL(item.previewUrl);
    this.items = this.items.filter((candidate) => candidate !== item);
    this.render();
  }

  get uploading() {
    return this.items.some((item) => item.status === "uploading");
  }

  get isEmpty() {
    return this.items.length === 0;
  }

  // The attachments to send: [{ media, dataUrl }], and the tray emptied.
  async take() {
    const ready = this.items.filter((item) => item.status === "ready");
    const taken = await Promise.all(ready.map(async (item) => ({ media: item.media, dataUrl: await blobToDataUrl(item.file) })));
    for (const item of ready) URL.revokeObjectURL(item.previewUrl);
    this.items = [];
    this.render();
    return taken;
  }

  render() {
    this.element.replaceChildren(...this.items.map((item) => this.chip(item)));
    this.element.hidden = this.items.length === 0;
    this.onChange();
  }

  chip(item) {
    const chip = document.createElement("div");
    chip.className = `attachment-chip ${item.status}`;
    chip.dataset.kind = item.kind;
    chip.append(mediaPreview(item.kind, item.previewUrl, item.file.name));
    const name = document.createElement("span");
    name.className = "attachment-name";
    name.textContent = item.status === "uploading" ? `${item.file.name} (uploading…)` : item.file.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon-button attachment-remove";
    remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    remove.innerHTML = ICONS.close; // a constant from icons.js
    remove.addEventListener("click", () => this.remove(item.key));
    chip.append(name, remove);
    return chip;
  }
}

// An <img>, <video controls> or <audio controls> for a URL.
export function mediaPreview(kind, url, label) {
  let element;
  if (kind === "image") {
    element = document.createElement("img");
    element.alt = label || "image";
  } else if (kind === "video") {
    element = document.createElement("video");
    element.controls = true;
    element.muted = true;
    element.preload = "metadata";
  } else {
    element = document.createElement("audio");
    element.controls = true;
    element.preload = "metadata";
  }
  element.src = url;
  element.className = `media-preview media-${kind}`;
  if (kind !== "image") element.setAttribute("aria-label", label || kind);
  return element;
}

// Wire the picker, drag and drop onto `dropZone`, and paste into `pasteTarget` to the tray.
export function bindFileSources(tray, { picker, dropZone, pasteTarget }) {
  picker.addEventListener("change", () => {
    tray.add(picker.files);
    picker.value = "";
  });
  dropZone.addEventListener("dragover", (event) => {
    if (!event.dataTransfer.types.includes("Files")) return;
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", (event) => {
    if (!dropZone.contains(event.relatedTarget)) dropZone.classList.remove("dragging");
  });
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    if (event.dataTransfer.files.length) tray.add(event.dataTransfer.files);
  });
  pasteTarget.addEventListener("paste", (event) => {
    const files = [...event.clipboardData.items].filter((entry) => entry.kind === "file").map((entry) => entry.getAsFile());
    if (files.length) {
      event.preventDefault();
      tray.add(files.map((file, i) => (file.name && file.name !== "image.png" ? file : renamed(file, i))));
    }
  });
}

function renamed(file, index) {
  const extension = (file.type.split("/")[1] || "bin").replace("jpeg", "jpg");
  return new File([file], `pasted-${Date.now()}-${index}.${extension}`, { type: file.type });
}

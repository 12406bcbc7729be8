// The omnilive web app: wires the sidebar (history), the message list, the composer (text and
// attachments), the settings dialog and the voice/video panel to the server's API.

import { apiJson, apiKey, describeError } from "./api.js";
import { AttachmentTray, bindFileSources } from "./attachments.js";
import { streamChat, toApiMessages } from "./chat.js";
import { historyApi, mediaObjectUrl, Sidebar } from "./history.js";
import { LiveController } from "./live.js";
import { MessageList } from "./messages.js";
import { PcmPlayer } from "./player.js";
import { loadSettings, requestOptions, saveSettings, SettingsDialog } from "./settings.js";

const $ = (id) => document.getElementById(id);
const root = $("app");

const state = {
  settings: loadSettings(),
  conversationId: null,
  history: [], // [{ role, content, reasoning, media: [{ id, kind, mime_type, filename, dataUrl? }] }]
  abort: null, // AbortController of the reply being streamed
  replies: 0,
};

const messages = new MessageList($("messages"));
const player = new PcmPlayer({
  onProgress: (ms) => (root.dataset.audioPlayedMs = String(ms)),
  onIdle: () => live.playbackEnded(),
});
const tray = new AttachmentTray({ element: $("attachment-tray"), onError: showError, onChange: updateSendButton });
const settingsDialog = new SettingsDialog({ dialog: $("settings-dialog"), onSave: applySettings });
const sidebar = new Sidebar({
  list: $("conversation-list"),
  callbacks: {
    onOpen: (id) => openConversation(id),
    onDeleted: (id) => id === state.conversationId && newChat(),
    onRenamed: (id, title) => id === state.conversationId && setTitle(title),
    onError: showError,
  },
});
const live = new LiveController({
  root,
  messages,
  player,
  settings: () => state.settings,
  model: () => $("model-select").value,
  ensureConversation,
  recordTurn,
  showError,
});

// -- errors and small UI helpers -------------------------------------------------------------

function showError(message) {
  $("error-text").textContent = message;
  $("error-banner").hidden = false;
}

function clearError() {
  $("error-banner").hidden = true;
}

function setTitle(title) {
  $("chat-title").textContent = title || "New chat";
  document.title = title ? `${title} · omnilive` : "omnilive";
}

function setBusy(busy) {
  root.dataset.busy = String(busy);
  $("stop-button").hidden = !busy;
  $("send-button").hidden = busy;
  updateSendButton();
}

function updateSendButton() {
  const empty = !$("message-input").value.trim() && tray.isEmpty;
  $("send-button").disabled = empty || tray.uploading || root.dataset.busy === "true";
}

function setSidebarOpen(open) {
  root.classList.toggle("sidebar-open", open);
  $("sidebar-backdrop").hidden = !open;
  $("open-sidebar").setAttribute("aria-expanded", String(open));
  if (open) $("new-chat").focus();
}

// -- models and settings ---------------------------------------------------------------------

async function loadModels() {
  let models;
  try {
    models = (await apiJson("/v1/models")).data;
  } catch (err) {
    showError(describeError(err));
    return;
  }
  const select = $("model-select");
  select.replaceChildren(...models.map((model) => new Option(model.id, model.id)));
  if (models.some((model) => model.id === state.settings.model)) select.value = state.settings.model;
  const card = models.find((model) => model.id === select.value) || models[0];
  if (card) settingsDialog.setVoices(card.voices || [], card.default_voice);
  await showSignedIn();
}

// who the API key belongs to: a user's name, or the operator (--api-key, or an open server)
async function showSignedIn() {
  const badge = $("signed-in");
  try {
    const me = await apiJson("/v1/me");
    const operator = me.name === "(operator)";
    badge.textContent = operator ? (apiKey() ? "operator" : "open server") : me.name;
    badge.dataset.admin = String(me.admin);
    badge.title = operator ? "No user: the operator's key, or a server without users"
      : `Signed in as ${me.name}${me.admin ? " (admin)" : ""}`;
    badge.hidden = false;
  } catch {
    badge.hidden = true;
  }
}

function applySettings(changes) {
  state.settings = { ...state.settings, ...changes };
  saveSettings(state.settings);
  clearError();
  loadModels().then(() => sidebar.refresh()); // a new API key may open what was refused
}

// -- conversations -----------------------------------------------------------------------------

function newChat() {
  stopReply();
  state.conversationId = null;
  state.history = [];
  messages.showWelcome();
  setTitle("");
  sidebar.setActive(null);
  history.replaceState(null, "", location.pathname);
  $("message-input").focus();
}

async function openConversation(id) {
  stopReply();
  let conversation;
  try {
    conversation = await historyApi.get(id);
  } catch (err) {
    showError(`Could not open the conversation: ${describeError(err)}`);
    return;
  }
  state.conversationId = id;
  state.history = conversation.messages.map(({ role, content, reasoning, media }) => ({ role, content, reasoning, media }));
  messages.clear();
  if (!state.history.length) messages.showWelcome();
  for (const message of state.history) {
    const media = message.media.map((m) => ({ kind: m.kind, filename: m.filename, url: mediaObjectUrl(m.id) }));
    messages.add({ role: message.role, content: message.content, reasoning: message.reasoning || "", media });
  }
  messages.scrollToEnd();
  setTitle(conversation.title);
  sidebar.setActive(id);
  history.replaceState(null, "", `#/c/${id}`);
  setSidebarOpen(false);
}

async function ensureConversation() {
  if (state.conversationId) return state.conversationId;
  const conversation = await historyApi.create({ model: $("model-select").value, system_prompt: state.settings.systemPrompt });
  state.conversationId = conversation.id;
  history.replaceState(null, "", `#/c/${conversation.id}`);
  sidebar.activeId = conversation.id;
  return conversation.id;
}

// Save one finished message; the chat goes on even if saving fails, but the user is told.
async function persist(message) {
  try {
    const id = await ensureConversation();
    await historyApi.append(id, {
      role: message.role,
      content: message.content,
      reasoning: message.reasoning || null,
      media: (message.media || []).map((m) => m.id),
    });
  } catch (err) {
    showError(`This message was not saved to the history: ${describeError(err)}`);
  }
}

async function recordTurn(message) {
  state.history.push(message);
  await persist(message);
  refreshTitle();
}

async function refreshTitle() {
  await sidebar.refresh();
  const current = sidebar.conversations.find((c) => c.id === state.conversationId);
  if (current) setTitle(current.title);
}

// -- sending and streaming -------------------------------------------------------------------

async function send() {
  const input = $("message-input");
  const text = input.value.trim();
  if ((!text && tray.isEmpty) || tray.uploading || root.dataset.busy === "true") return;
  clearError();
  await player.unlock(); // inside the click / key press, so the browser lets audio play
  const attachments = await tray.take();
  input.value = "";
  autoGrow();
  const media = attachments.map(({ media: m, dataUrl }) => ({ ...m, dataUrl }));
  const userMessage = { role: "user", content: text, media };
  messages.add({ role: "user", content: text, media: media.map((m) => ({ kind: m.kind, filename: m.filename, url: m.dataUrl })) });
  messages.scrollToEnd();
  state.history.push(userMessage);
  setBusy(true);
  await persist(userMessage);
  await reply();
}

async function reply() {
  const view = messages.add({ role: "assistant" });
  view.setPending(true);
  messages.scrollToEnd();
  const controller = new AbortController();
  const audioItem = `reply-${++state.replies}`; // the player groups this reply's chunks
  state.abort = controller;
  let content = "";
  let reasoning = "";
  let failure = null;
  try {
    const body = {
      model: $("model-select").value,
      messages: await toApiMessages(state.history, state.settings.systemPrompt),
      ...requestOptions(state.settings),
    };
    const result = await streamChat({
      body,
      signal: controller.signal,
      onText: (text) => view.setContent((content = text)),
      onReasoning: (text) => view.setReasoning((reasoning = text)),
      onAudio: (data) => player.enqueue(data, audioItem),
    });
    if (result.finishReason === "length") view.setStatus("The reply hit the length limit.");
    const thought = result.usage?.completion_tokens_details?.reasoning_tokens;
    if (thought) view.setThinkingUsage(thought, body.max_thinking_tokens);
  } catch (err) {
    if (err.name === "AbortError") {
      view.setStatus("Stopped.");
    } else {
      failure = describeError(err);
      view.setStatus(failure, "error");
      showError(failure);
    }
  } finally {
    view.setPending(false);
    if (state.abort === controller) state.abort = null;
    setBusy(false);
  }
  if (content || reasoning) {
    const assistantMessage = { role: "assistant", content, reasoning };
    state.history.push(assistantMessage);
    await persist(assistantMessage);
  } else if (failure) {
    state.history.pop(); // nothing came back: let the user retry the same message cleanly
  }
  refreshTitle();
}

function stopReply() {
  if (state.abort) state.abort.abort();
  player.stop();
}

// -- wiring ----------------------------------------------------------------------------------

function autoGrow() {
  const input = $("message-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

function setMode(mode) {
  root.dataset.mode = mode;
  for (const name of ["chat", "voice", "video"]) $(`mode-${name}`).setAttribute("aria-pressed", String(name === mode));
  if (mode === "chat") live.hide();
  else live.show(mode === "video");
}

function bind() {
  const input = $("message-input");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  input.addEventListener("input", () => {
    autoGrow();
    updateSendButton();
  });
  $("stop-button").addEventListener("click", stopReply);
  $("new-chat").addEventListener("click", () => {
    newChat();
    setSidebarOpen(false);
  });
  $("open-settings").addEventListener("click", () => settingsDialog.open(state.settings));
  $("signed-in").addEventListener("click", () => settingsDialog.open(state.settings));
  $("error-close").addEventListener("click", clearError);
  $("open-sidebar").addEventListener("click", () => setSidebarOpen(true));
  $("close-sidebar").addEventListener("click", () => setSidebarOpen(false));
  $("sidebar-backdrop").addEventListener("click", () => setSidebarOpen(false));
  $("model-select").addEventListener("change", () => applySettings({ model: $("model-select").value }));
  for (const mode of ["chat", "voice", "video"]) $(`mode-${mode}`).addEventListener("click", () => setMode(mode));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && root.classList.contains("sidebar-open")) setSidebarOpen(false);
  });
  bindFileSources(tray, { picker: $("file-picker"), dropZone: document.querySelector(".main"), pasteTarget: input });
}

async function start() {
  bind();
  messages.showWelcome();
  await loadModels();
  await sidebar.refresh();
  const match = /^#\/c\/([\w-]+)$/.exec(location.hash);
  if (match) await openConversation(match[1]);
  updateSendButton();
  root.dataset.ready = "true";
}

start();

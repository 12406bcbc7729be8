// User settings, kept in localStorage, edited in the settings dialog. The API key lives under
// its own key (api.js) so it is never sent anywhere but the Authorization header.

import { apiKey, setApiKey } from "./api.js";

const STORAGE = "omnilive.settings";
export const THINKING_UNLIMITED = 8192; // the slider's top position: no budget sent

const DEFAULTS = {
  model: "",
  voice: "",
  speak: false,
  thinkingBudget: THINKING_UNLIMITED,
  temperature: 0.7,
  systemPrompt: "",
};

export function loadSettings() {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(STORAGE) || "{}") };
  } catch {
    return { ...DEFAULTS };
  }
}

export function saveSettings(settings) {
  localStorage.setItem(STORAGE, JSON.stringify(settings));
}

// The chat completions fields these settings ask for.
export function requestOptions(settings) {
  const options = { temperature: settings.temperature };
  if (settings.thinkingBudget < THINKING_UNLIMITED) options.max_thinking_tokens = settings.thinkingBudget;
  if (settings.speak) {
    options.modalities = ["text", "audio"];
    options.audio = { format: "pcm16", ...(settings.voice ? { voice: settings.voice } : {}) };
  }
  return options;
}

export class SettingsDialog {
  constructor({ dialog, onSave }) {
    this.dialog = dialog;
    this.onSave = onSave;
    this.form = dialog.querySelector("form");
    this.fields = {
      voice: this.form.elements.voice,
      speak: this.form.elements.speak,
      thinkingBudget: this.form.elements.thinkingBudget,
      temperature: this.form.elements.temperature,
      systemPrompt: this.form.elements.systemPrompt,
      apiKey: this.form.elements.apiKey,
    };
    for (const name of ["thinkingBudget", "temperature"]) {
      this.fields[name].addEventListener("input", () => this.showValues());
    }
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
  }

  setVoices(voices, defaultVoice) {
    const select = this.fields.voice;
    select.replaceChildren(
      ...voices.map((voice) => new Option(voice === defaultVoice ? `${voice} (default)` : voice, voice)),
    );
  }

  open(settings) {
    this.fields.voice.value = settings.voice || this.fields.voice.options[0]?.value || "";
    this.fields.speak.checked = settings.speak;
    this.fields.thinkingBudget.value = settings.thinkingBudget;
    this.fields.temperature.value = settings.temperature;
    this.fields.systemPrompt.value = settings.systemPrompt;
    this.fields.apiKey.value = apiKey();
    this.showValues();
    this.dialog.showModal();
  }

  showValues() {
    const budget = Number(this.fields.thinkingBudget.value);
    this.form.querySelector("#thinking-value").textContent =
      budget >= THINKING_UNLIMITED ? "unlimited" : budget === 0 ? "off" : `${budget} tokens`;
    this.form.querySelector("#temperature-value").textContent = Number(this.fields.temperature.value).toFixed(1);
  }

  save() {
    setApiKey(this.fields.apiKey.value.trim());
    this.onSave({
      voice: this.fields.voice.value,
      speak: this.fields.speak.checked,
      thinkingBudget: Number(this.fields.thinkingBudget.value),
      temperature: Number(this.fields.temperature.value),
      systemPrompt: this.fields.systemPrompt.value,
    });
    this.dialog.close();
  }
}

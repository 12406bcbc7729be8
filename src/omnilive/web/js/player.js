// Plays PCM16 24 kHz mono as it streams in, gap-free: each chunk is scheduled right after the
// previous one on one AudioContext. Knows how much of each item has actually been heard, which
// barge-in needs (conversation.item.truncate's audio_end_ms), and reports the total played so
// far through onProgress (the page shows it as data-audio-played-ms).

import { bytesFromBase64 } from "./api.js";

const SAMPLE_RATE = 24000;
const START_LEAD_S = 0.05; // a first chunk starts this far ahead, so it is not cut at the front

export class PcmPlayer {
  constructor({ onProgress = () => {}, onIdle = () => {} } = {}) {
    this.onProgress = onProgress;
    this.onIdle = onIdle;
    this.context = null;
    this.sources = new Set();
    this.scheduledSeconds = 0; // all audio ever scheduled, minus what stop() cut
    this.nextStart = 0; // context time where the next chunk goes
    this.item = null; // { id, scheduledBefore }
    this.timer = null;
  }

  // Create or resume the context; call it from a click so autoplay rules allow sound.
  async unlock() {
    if (!this.context) this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
    if (this.context.state === "suspended") await this.context.resume();
  }

  // base64 PCM16 little-endian → scheduled playback. `itemId` groups chunks of one reply.
  enqueue(base64, itemId = "reply") {
    const bytes = bytesFromBase64(base64);
    const samples = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    if (!samples.length) return;
    if (!this.context) this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
    if (this.context.state === "suspended") this.context.resume();
    if (!this.item || this.item.id !== itemId) this.item = { id: itemId, scheduledBefore: this.playedSeconds() };

    const buffer = this.context.createBuffer(1, samples.length, SAMPLE_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const now = this.context.currentTime;
    const start = Math.max(this.nextStart, now + START_LEAD_S);
    source.start(start);
    this.nextStart = start + buffer.duration;
    // a gap (the network fell behind) is silence that was never "played"
    this.scheduledSeconds += buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      this.report();
      if (!this.sources.size) this.idle();
    };
    if (!this.timer) this.timer = setInterval(() => this.report(), 100);
  }

  get playing() {
    return this.sources.size > 0;
  }

  playedSeconds() {
    if (!this.context) return 0;
    const unplayed = Math.max(0, this.nextStart - this.context.currentTime);
    return Math.max(0, this.scheduledSeconds - Math.min(unplayed, this.queuedSeconds()));
  }

  // what is scheduled and not yet heard can never exceed what the sources hold
  queuedSeconds() {
    let total = 0;
    for (const source of this.sources) total += source.buffer.duration;
    return total;
  }

  // Milliseconds of `itemId` heard so far (0 for an item that is not the current one).
  playedMsOf(itemId) {
    if (!this.item || this.item.id !== itemId) return 0;
    return Math.round((this.playedSeconds() - this.item.scheduledBefore) * 1000);
  }

  get currentItemId() {
    return this.item ? this.item.id : null;
  }

  // Cut playback now. Returns { itemId, playedMs } of what was playing, or null if nothing was.
  stop() {
    if (!this.context || !this.sources.size) return null;
    const cut = { itemId: this.item && this.item.id, playedMs: this.item ? this.playedMsOf(this.item.id) : 0 };
    const unplayed = Math.max(0, this.nextStart - this.context.currentTime);
    this.scheduledSeconds -= Math.min(unplayed, this.queuedSeconds());
    this.nextStart = this.context.currentTime;
    for (const source of this.sources) {
      source.onended = null;
      source.stop();
    }
    this.sources.clear();
    this.item = null;
    this.idle();
    return cut;
  }

  report() {
    this.onProgress(Math.round(this.playedSeconds() * 1000));
  }

  idle() {
    clearInterval(this.timer);
    this.timer = null;
    this.report();
    this.onIdle();
  }
}

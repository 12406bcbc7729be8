// AudioWorklet: microphone at the context's rate → PCM16 mono at 24 kHz, posted to the page in
// 100 ms chunks (Int16Array buffers, transferred). Linear interpolation; the fractional read
// position and the last sample carry across blocks so chunk edges are seamless.

const TARGET_RATE = 24000;
const CHUNK_SAMPLES = TARGET_RATE / 10;

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // read position relative to the current block; -1 = the previous block's last
    this.last = 0;
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input || !input.length) return true;
    let p = this.position;
    while (p < input.length - 1) {
      const i = Math.floor(p);
      const a = i < 0 ? this.last : input[i];
      const b = input[i + 1];
      this.push(a + (b - a) * (p - i));
      p += this.step;
    }
    this.position = p - input.length;
    this.last = input[input.length - 1];
    return true;
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.chunk[this.filled++] = clipped < 0 ? clipped * 32768 : clipped * 32767;
    if (this.filled === CHUNK_SAMPLES) {
      this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
      this.chunk = new Int16Array(CHUNK_SAMPLES);
      this.filled = 0;
    }
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);

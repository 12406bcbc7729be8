"""Streaming Qwen2.5-Omni token2wav: codec tokens go in as the talker makes them, 24 kHz
waveform chunks come out long before the reply's last token exists.

  push(codes) ─▶ DiT ODE solve on a window of blocks ─▶ final mel chunk ─▶ BigVGAN ─▶ waveform chunk
                 [past | chunk | future] blocks         (the chunk part)    (L, R frames of context)

Why a window and not the whole utterance: one DiT forward lets mel block k see blocks
k - len(look_backward_layers) … k + len(look_ahead_layers) (2 back, 1 ahead at real size). The
RK4 sampler chains 4·(num_steps - 1) forwards, so in the whole-utterance solve block k depends
on blocks up to 36 ahead at 10 steps (~8.6 s of speech): in practice the whole reply. Hence:
  - `StreamingSchedule.exact(config, num_steps)` takes the chained receptive field as context and
    equals the whole-utterance solve; it only streams when that field is shorter than the reply
    (few steps, long replies).
  - the default schedule uses Qwen's own streaming values (chunk 3 blocks, 2 past, 1 future): a
    bounded look-ahead whose (small) difference from the whole solve is measured in the tests.
Every window uses the same slice of the utterance's initial noise, absolute RoPE positions and
block boundaries as the whole solve, so the only difference is the context the window leaves out.

BigVGAN is convolutional with a finite receptive field (`vocoder_receptive_field` frames each
side): vocoding the final mel with that much context on both sides splices chunks exactly, no
crossfade. The waveform therefore lags that many frames behind the final mel until `finish()`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from omnilive.model.bigvgan import AntiAliasedSnake, BigVGAN
from omnilive.model.token2wav import Token2Wav, Voice, flow_time_grid, rk4_integrate
from omnilive.model.token2wav_config import BigVGANConfig, DiTConfig


def ode_evaluations(num_steps: int) -> int:
    """DiT forwards in one solve: RK4 evaluates the velocity 4 times per interval of the time grid."""
    return 4 * max(num_steps - 1, 0)


@dataclass(frozen=True)
class StreamingSchedule:
    """Sizes in DiT attention blocks (block_size mel frames, 24 = 0.24 s at real size)."""

    chunk_blocks: int = 3  # blocks made final by one ODE solve
    past_blocks: int = 2  # already-final blocks solved again as left context
    future_blocks: int = 1  # blocks after the chunk solved as look-ahead and thrown away

    def __post_init__(self) -> None:
        if self.chunk_blocks < 1 or self.past_blocks < 0 or self.future_blocks < 0:
            raise ValueError(f"invalid streaming schedule {self}")

    @classmethod
    def exact(cls, config: DiTConfig, num_steps: int, chunk_blocks: int = 1) -> StreamingSchedule:
        """Context equal to the sampler's chained receptive field: chunked output == whole output."""
        evaluations = ode_evaluations(num_steps)
        return cls(chunk_blocks, past_blocks=evaluations * len(config.look_backward_layers),
                   future_blocks=evaluations * len(config.look_ahead_layers))

    def window(self, chunk: int, block_size: int, utterance_frames: int | None = None) -> tuple[int, int, int, int]:
        """Mel frames (solve_start, chunk_start, chunk_end, solve_end) of chunk number `chunk`.
        solve_end is how far its look-ahead needs codes; once the utterance's length is known
        (utterance_frames), the chunk and the solve stop there."""
        chunk_start = chunk * self.chunk_blocks * block_size
        solve_start = max(chunk_start - self.past_blocks * block_size, 0)
        chunk_end = chunk_start + self.chunk_blocks * block_size
        solve_end = chunk_end + self.future_blocks * block_size
        if utterance_frames is not None:
            chunk_end, solve_end = min(chunk_end, utterance_frames), min(solve_end, utterance_frames)
        return solve_start, chunk_start, chunk_end, solve_end


def vocoder_receptive_field(config: BigVGANConfig) -> int:
    """Mel frames on each side of a frame that can change its waveform samples (an upper bound).

    Reach is summed layer by layer in the units of each layer's input rate, then converted to
    mel frames: conv_pre, per stage the transposed-conv upsampler and the widest AMP block,
    then the final activation and conv_post."""
    activation = AntiAliasedSnake.taps // 2 - 1  # 2x up- then down-sampling low-pass, 5 samples for 12 taps
    reach = 3.0  # conv_pre, kernel 7
    samples_per_frame = 1
    for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
        padding = (kernel - rate) // 2
        reach += math.ceil(max(kernel - 1 - padding, padding) / rate) / samples_per_frame
        samples_per_frame *= rate
        amp_block = max(
            sum(2 * activation + dilation * (size - 1) // 2 + (size - 1) // 2 for dilation in dilations)
            for size, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        reach += amp_block / samples_per_frame
    reach += (activation + 3) / samples_per_frame  # activation_post, conv_post (kernel 7)
    return math.ceil(reach)


def autocast_to(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 matmuls/convs with float32 accumulation outside them; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class StreamingVocoder:
    """Final mel frames in, the waveform they determine out; chunks splice exactly.

    Each call vocodes [emitted - L, final_end) and keeps the samples of [emitted, final_end - R):
    those samples see all the mel they would see in a whole-utterance call (L = R = receptive field).
    """

    def __init__(self, bigvgan: BigVGAN, compute_dtype: torch.dtype = torch.float32):
        self.bigvgan = bigvgan
        self.context = vocoder_receptive_field(bigvgan.config)
        self.hop = bigvgan.config.hop_length
        self.compute_dtype = compute_dtype
        self._mel: torch.Tensor | None = None  # [1, M, kept frames], frame 0 at absolute _mel_start
        self._mel_start = 0
        self.emitted_frames = 0  # mel frames whose waveform has been returned

    @torch.no_grad()
    def push(self, mel: torch.Tensor, last: bool = False) -> torch.Tensor:
        """mel [1, M, n] (the next final frames) → waveform [samples] float32, possibly empty."""
        self._mel = mel if self._mel is None else torch.cat([self._mel, mel], dim=-1)
        final_end = self._mel_start + self._mel.shape[-1]
        emit_end = final_end if last else final_end - self.context
        if emit_end <= self.emitted_frames:
            return self._mel.new_zeros(0)
        input_start = max(self.emitted_frames - self.context, self._mel_start)
        with autocast_to(self.compute_dtype, mel.device):
            waveform = self.bigvgan(self._mel[..., input_start - self._mel_start:]).float()[0]
        keep = waveform[(self.emitted_frames - input_start) * self.hop:(emit_end - input_start) * self.hop]
        self.emitted_frames = emit_end
        drop = max(emit_end - self.context - self._mel_start, 0)  # frames no later call can need
        self._mel, self._mel_start = self._mel[..., drop:], self._mel_start + drop
        return keep


class StreamingToken2Wav:
    """One utterance: `push(codes)` as codec tokens arrive, then `finish()`; both return the
    waveform chunks (1-D float32 at model.sample_rate) that became final, in order."""

    def __init__(self, model: Token2Wav, voice: Voice, *, num_steps: int = 10, guidance_scale: float = 0.5,
                 sway_coefficient: float | None = -1.0, schedule: StreamingSchedule = StreamingSchedule(),
                 initial_noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 compute_dtype: torch.dtype = torch.float32, vocoder_dtype: torch.dtype = torch.float32,
                 first_chunk_steps: int | None = None):
        """initial_noise [1, ≥ frames, M]: the whole utterance's ODE start; None draws it block by
        block from `generator` (so it depends on the seed only, not on how codes were pushed).
        compute_dtype: the DiT's matmuls (bfloat16 is ~3x faster on CPUs with AVX512-BF16);
        vocoder_dtype: BigVGAN's convolutions (bfloat16 is slower there on such CPUs).
        first_chunk_steps: ODE steps of the first window only (None or ≥ num_steps: num_steps), for an earlier
        first chunk; later windows re-solve its frames as past context with num_steps, so only
        the first chunk's own audio carries the cost (bench/speech_quality.py measures it)."""
        self.dit = model.code2wav_dit_model
        config = self.dit.config
        if config.block_size % config.repeats:
            raise ValueError("streaming needs block_size to be a multiple of repeats")
        self.config, self.schedule, self.compute_dtype = config, schedule, compute_dtype
        self.device = next(self.dit.parameters()).device
        self.guidance_scale = guidance_scale
        self.guided = guidance_scale >= 1e-5
        self.times = flow_time_grid(num_steps, sway_coefficient, self.device)
        self.first_times = (self.times if first_chunk_steps is None or first_chunk_steps >= num_steps
                            else flow_time_grid(first_chunk_steps, sway_coefficient, self.device))
        self.vocoder = StreamingVocoder(model.code2wav_bigvgan_model, vocoder_dtype)
        self._generator = generator
        self._noise_is_given = initial_noise is not None
        self._noise = (initial_noise.to(self.device, torch.float32) if initial_noise is not None
                       else torch.zeros(1, 0, config.mel_dim, device=self.device))
        self._speaker_features, self._speaker_embedding = self._speaker_conditioning(voice)
        self._codes = torch.zeros(1, 0, dtype=torch.long, device=self.device)
        self._next_chunk = 0
        self._finished = False

    @property
    def frames(self) -> int:
        """Mel frames the codes pushed so far cover."""
        return self._codes.shape[1] * self.config.repeats

    @property
    def initial_noise(self) -> torch.Tensor:
        """[1, frames, M]: the ODE start of the utterance so far (pass it to Token2Wav.synthesize
        to get the whole-utterance output these chunks approximate or equal)."""
        return self._noise[:, :self.frames]

    def push(self, codes: torch.Tensor | list[int]) -> list[torch.Tensor]:
        """Add codes; solve the windows they completed (batched where they can be) and vocode them."""
        self.add_codes(codes)
        return self._run(self.due_windows())

    def add_codes(self, codes: torch.Tensor | list[int]) -> None:
        """Add codes only; `due_windows` then says what can be solved (by `solve_windows`,
        together with other streams' windows)."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device).reshape(1, -1)
        self._codes = torch.cat([self._codes, codes], dim=1)
        if self.frames > self.config.max_position_embeddings:
            raise ValueError(f"{self.frames} mel frames exceed the DiT's max_position_embeddings")

    def due_windows(self) -> list[DiTWindow]:
        """The next chunks whose whole look-ahead exists, in order; each is handed out once and
        must go back through `complete` in that order."""
        windows = []
        while self._window(self._next_chunk)[3] <= self.frames:
            windows.append(self._take_window())
        return windows

    def complete(self, window: DiTWindow, mel: torch.Tensor) -> torch.Tensor:
        """A solved window (mel [1, M, T]) → the waveform that became final (maybe empty)."""
        chunk = mel[..., window.chunk_start - window.start:window.chunk_end - window.start]
        return self.vocoder.push(chunk, last=window.last)

    def finish(self) -> list[torch.Tensor]:
        """Solve the remaining chunks (their windows end at the utterance's end) and flush."""
        self._finished = True
        windows = []
        while self._window(self._next_chunk)[1] < self.frames:
            windows.append(self._take_window())
        chunks = self._run(windows)
        if self.vocoder.emitted_frames < self.frames:  # the last chunk was solved before finish()
            tail = self.vocoder.push(self._noise.new_zeros(1, self.config.mel_dim, 0), last=True)
            chunks += [tail] if tail.numel() else []
        return chunks

    def _window(self, chunk: int) -> tuple[int, int, int, int]:
        return self.schedule.window(chunk, self.config.block_size, self.frames if self._finished else None)

    def _take_window(self) -> DiTWindow:
        start, chunk_start, chunk_end, end = self._window(self._next_chunk)
        times = self.first_times if self._next_chunk == 0 else self.times
        self._next_chunk += 1
        repeats = self.config.repeats
        return DiTWindow(self, start, chunk_start, chunk_end, end, times, self._noise_until(end)[:, start:end],
                         self.frame_conditioning(self._codes[:, start // repeats:end // repeats]),
                         last=self._finished and chunk_end == self.frames)

    def _run(self, windows: list[DiTWindow]) -> list[torch.Tensor]:
        chunks = [self.complete(window, mel) for window, mel in zip(windows, solve_windows(windows))]
        return [chunk for chunk in chunks if chunk.numel()]

    def _noise_until(self, end: int) -> torch.Tensor:
        block = self.config.block_size
        while self._noise.shape[1] < end:
            if self._noise_is_given:
                raise ValueError(f"initial_noise covers {self._noise.shape[1]} frames, the utterance needs {end}")
            more = torch.randn(1, block, self.config.mel_dim, generator=self._generator, device=self.device)
            self._noise = torch.cat([self._noise, more], dim=1)
        return self._noise

    @torch.no_grad()
    def _speaker_conditioning(self, voice: Voice) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-utterance part of DiT.conditioning, once: ECAPA features [B', enc_dim] and the
        x-vector [B', enc_emb_dim]; B' = 2 with guidance (row 1 the zero "null" speaker)."""
        speaker_embedding = voice.speaker_embedding.to(self.device).float().reshape(1, -1)
        reference_mel = voice.reference_mel.to(self.device).float()
        if self.guided:
            speaker_embedding = torch.cat([speaker_embedding, torch.zeros_like(speaker_embedding)])
            reference_mel = torch.cat([reference_mel, torch.zeros_like(reference_mel)])
        return self.dit.input_embed.spk_encoder(reference_mel), speaker_embedding

    def frame_conditioning(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [1, n] → [B', n·repeats, enc_dim + emb_dim + enc_emb_dim], as DiT.conditioning."""
        if self.guided:
            codes = torch.cat([codes, torch.zeros_like(codes)])  # the null condition: every code 0
        code_embedding = self.dit.text_embed(codes)
        frames = code_embedding.shape[1]
        return torch.cat([
            self._speaker_features.unsqueeze(1).expand(-1, frames, -1),
            code_embedding,
            self._speaker_embedding.unsqueeze(1).expand(-1, frames, -1),
        ], dim=-1)


@dataclass(eq=False)
class DiTWindow:
    """One ODE solve a stream needs: frames [start, end) of its utterance, of which
    [chunk_start, chunk_end) become final."""

    stream: StreamingToken2Wav
    start: int
    chunk_start: int
    chunk_end: int
    end: int
    times: torch.Tensor  # the ODE time grid
    noise: torch.Tensor  # [1, T, M] float32: the utterance's initial noise on these frames
    conditioning: torch.Tensor  # [B', T, C]: DiT.conditioning rows (B' = 2 with guidance: conditional, null)
    last: bool  # its chunk ends the utterance

    @property
    def batch_key(self) -> tuple:
        """Windows with equal keys solve as one batch: same DiT and settings, length and time grid."""
        stream = self.stream
        return (id(stream.dit), stream.guidance_scale, stream.compute_dtype, self.end - self.start,
                tuple(self.times.tolist()))


def window_batches(windows: list[DiTWindow]) -> list[list[int]]:
    """Indices of the windows that can share one batched solve (`batch_key`: windows of other
    streams, or other chunks of one), groups in order of their first window."""
    groups: dict[tuple, list[int]] = {}
    for index, window in enumerate(windows):
        groups.setdefault(window.batch_key, []).append(index)
    return list(groups.values())


@torch.no_grad()
def solve_windows(windows: list[DiTWindow]) -> list[torch.Tensor]:
    """Solve every window's ODE → mel [1, M, T] float32 each, in order. Each of
    `window_batches` runs as one RK4 integration whose DiT forwards take all its rows at once:
    on a GPU, N streams cost about what one does."""
    mels: list[torch.Tensor | None] = [None] * len(windows)
    for indices in window_batches(windows):
        group = [windows[i] for i in indices]
        for i, mel in zip(indices, _solve_group(group).transpose(1, 2).split(1)):
            mels[i] = mel
    return mels


def _solve_group(windows: list[DiTWindow]) -> torch.Tensor:
    """Windows of one batch_key → mel [n, T, M]."""
    stream = windows[0].stream
    dit, guidance, guided = stream.dit, stream.guidance_scale, stream.guided
    if len(windows) == 1:  # one window: the int offset, as the whole-utterance solve takes it
        first_frame: int | torch.Tensor = windows[0].start
    else:
        first_frame = torch.tensor([window.start for window in windows], device=stream.device)
    rows = 2 if guided else 1  # conditional rows of every window, then their null rows
    conditioning = torch.cat([window.conditioning[r:r + 1] for r in range(rows) for window in windows])
    if guided and isinstance(first_frame, torch.Tensor):
        first_frame = first_frame.repeat(2)

    def velocity(time: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not guided:
            return dit(x, time, conditioning, first_frame).float()
        conditional, unconditional = dit(torch.cat([x, x]), time, conditioning, first_frame).float().chunk(2)
        return conditional + (conditional - unconditional) * guidance

    with autocast_to(stream.compute_dtype, stream.device):  # the ODE state itself stays float32
        return rk4_integrate(velocity, torch.cat([window.noise for window in windows]), windows[0].times)


__all__ = [
    "DiTWindow",
    "StreamingSchedule",
    "StreamingToken2Wav",
    "StreamingVocoder",
    "autocast_to",
    "ode_evaluations",
    "solve_windows",
    "window_batches",
    "vocoder_receptive_field",
]

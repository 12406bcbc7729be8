"""Qwen3-Omni checkpoints (`model_type: qwen3_omni_moe`) behind the native engine.

    omnilive serve --model /models/Qwen3-Omni-30B-A3B-Instruct   (text, images, audio, video in;
                                                                  text and speech out)

`load_omni` hands the directory here through backends/registry.py. The thinker
(model/qwen3_omni.py) runs on the one engine like a Qwen3-VL model (DeepStack rows ride on the
prepared prompt). A checkpoint with audio output enabled also loads its talker
(model/qwen3_omni_talker.py) and Code2Wav (model/qwen3_omni_code2wav.py); the engine's Qwen3
speech stage (engine/qwen3_speech.py) speaks each reply while the thinker writes it, in the
voices of the checkpoint's `speaker_id` table. A Captioner checkpoint (no talker) serves text.

The processor is Qwen3-Omni's (transformers' Qwen3OmniMoeProcessor):
- the checkpoint's chat template (QWEN3_OMNI_CHAT_TEMPLATE, a short form of Qwen3-Omni's, when
  the directory has none): `<|vision_start|><|image_pad|><|vision_end|>` per image,
  `<|audio_start|><|audio_pad|><|audio_end|>` per audio, `<|vision_start|><|video_pad|><|vision_end|>`
  per video;
- an image: one <|image_pad|> per 2x2 merge unit of its 16-pixel patch grid (preprocessor_config.json);
- an audio: 128-bin log-mel (16 kHz, 10 ms frames) and one <|audio_pad|> per AuT token
  (`aut_output_tokens`: 13 per second of audio). The feature extractor pads the prompt's audios
  to the longest of them (not to 300 s as Qwen2.5-Omni's does), so the longest one's last frames
  see its reflected end rather than silence: we compute each mel once all audios are known;
- a video: its frames at the decoder's rate (2 fps), a temporal patch spanning
  temporal_patch_size / fps seconds, one <|video_pad|> per merge unit, no timestamps; with its
  own audio track, <|video_pad|> becomes <|audio_start|> + video and audio placeholders merged by
  time (model/qwen3_omni_rope.py) + <|audio_end|>, the audio joining the audio inputs there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from omnilive.backends.native_prompt import (
    VIDEO_FPS_DEFAULT,
    CollectedMedia,
    MediaTokens,
    QwenProcessor,
    VisualPreprocessing,
    load_omni_tokenizer,
)
from omnilive.backends.registry import OmniModel
from omnilive.backends.speech_parts import qwen3_omni_speaks
from omnilive.engine.qwen3_speech import Qwen3SpeechModel, Qwen3SpeechSettings
from omnilive.engine.qwen3_talker_generate import (
    qwen3_talker_step,
    start_qwen3_talker_stream,
)
from omnilive.media.qwen_preprocess import (
    HOP_LENGTH,
    MAX_AUDIO_SECONDS,
    SAMPLE_RATE,
    log_mel_spectrogram,
    preprocess_video,
)
from omnilive.model.omni_checkpoint import read_config
from omnilive.model.qwen3_omni import Qwen3OmniThinkerConfig, load_qwen3_omni_thinker
from omnilive.model.qwen3_omni_code2wav import Qwen3OmniCode2Wav, load_qwen3_omni_code2wav
from omnilive.model.qwen3_omni_rope import video_with_audio_placeholders
from omnilive.model.qwen3_omni_talker import (
    Qwen3OmniTalker,
    Qwen3Voice,
    build_talker_prefill,
    checkpoint_voices,
    load_qwen3_omni_talker,
    new_talker_text_inputs,
)
from omnilive.model.tokenizer import Tokenizer
from omnilive.model.weights import resolve_dtype
from omnilive.types import AudioInput, EngineError, VideoInput

FAMILY = "Qwen3-Omni"

# Qwen3-Omni's chat template in short, for a checkpoint directory that lacks one
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen3OmniProcessor(QwenProcessor):
    """Qwen3-Omni's prompt builder: QwenProcessor's template, images and expansion, with AuT's
    audio token counts and videos whose audio merges with their frames by time."""

    family = FAMILY

    def __init__(self, tokenizer: Tokenizer, config: Qwen3OmniThinkerConfig, visual: VisualPreprocessing):
        # the closing marker of a video's audio is the tokenizer's <|audio_end|>, as transformers'
        # processor writes it (a thinker_config may not name it); the others are the config's
        audio_end = tokenizer.backend.token_to_id("<|audio_end|>")
        tokens = MediaTokens(config.image_token_id, config.video_token_id, config.audio_token_id,
                             config.audio_start_token_id, config.audio_end_token_id if audio_end is None else audio_end,
                             config.mrope_layout)
        super().__init__(tokenizer, tokens, visual, config.audio_config.num_mel_bins,
                         max_prompt_tokens=config.text_config.max_position_embeddings)
        self.config = config

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer: Tokenizer,
                        config: Qwen3OmniThinkerConfig) -> Qwen3OmniProcessor:
        return cls(tokenizer, config, VisualPreprocessing.from_checkpoint(directory))

    def _add_audio(self, audio: AudioInput, collected: CollectedMedia) -> int:
        """Its placeholder count; its samples wait in `collected.mels` for `_media`."""
        samples = np.asarray(audio.samples, dtype=np.float32).flatten()[: int(MAX_AUDIO_SECONDS * SAMPLE_RATE)]
        if len(samples) == 0:
            raise EngineError("an audio input is empty", param="messages")
        collected.mels.append(samples)
        return self.config.audio_tokens(math.ceil(len(samples) / HOP_LENGTH))

    def _media(self, collected: CollectedMedia):
        """Each audio's log-mel as the feature extractor computes it with every audio of the
        prompt padded to the longest."""
        if collected.mels:
            seconds = (max(len(samples) for samples in collected.mels) + 0.5) / SAMPLE_RATE  # the longest
            collected.mels[:] = [log_mel_spectrogram(samples, self.audio_bins, max_seconds=seconds)
                                 for samples in collected.mels]
        return super()._media(collected)

    def _add_video(self, video: VideoInput, collected: CollectedMedia) -> tuple[list[int], int, int]:
        t, v = self.tokens, self.visual
        if not video.frames:
            raise EngineError("a video has no frames", param="messages")
        try:
            patches = preprocess_video(video.frames, self.image, v.video_min_pixels, v.video_max_pixels)
        except ValueError as error:
            raise EngineError(f"a video cannot be used: {error}", param="messages") from None
        seconds = self.image.temporal_patch_size / (video.fps if video.fps and video.fps > 0 else VIDEO_FPS_DEFAULT)
        collected.videos.append(patches)
        collected.video_seconds.append(seconds)
        vision_count = patches.token_counts(self.image.merge_size)[0]
        if video.audio is None or len(video.audio.samples) == 0:
            return [t.video] * vision_count, vision_count, 0
        audio_count = self._add_audio(video.audio, collected)
        try:
            merged = video_with_audio_placeholders(patches.grid_thw[0].tolist(), seconds, audio_count,
                                                   t.mrope_layout)
        except ValueError as error:  # a frame rate whose patch times are not whole position ids
            raise EngineError(f"a video cannot be used: {error}", param="messages") from None
        return [t.audio_start, *merged, t.audio_end], vision_count, audio_count


def load_qwen3_omni_family(directory: str | Path, dtype: torch.dtype, device: str = "cpu",
                           int8_experts: bool = False) -> OmniModel:
    """The thinker, tokenizer and processor of a Qwen3-Omni checkpoint, plus its talker,
    Code2Wav (float32) and voices when it speaks (audio output enabled, a talker with voices).
    int8_experts: the thinker's and the talker's MoE experts in int8 (model/moe_int8.py)."""
    directory = Path(directory)
    thinker = load_qwen3_omni_thinker(directory, dtype, device, int8_experts=int8_experts)
    tokenizer = load_omni_tokenizer(directory, fallback_template=QWEN3_OMNI_CHAT_TEMPLATE)
    processor = Qwen3OmniProcessor.from_checkpoint(directory, tokenizer, thinker.thinker_config)
    model = OmniModel(thinker=thinker, tokenizer=tokenizer, processor=processor, talker=None, family=FAMILY)
    if qwen3_omni_speaks(read_config(directory)):
        model.talker = load_qwen3_omni_talker(directory, dtype, device, int8_experts=int8_experts)
        model.token2wav = load_qwen3_omni_code2wav(directory, torch.float32, device)
        model.voices = checkpoint_voices(model.talker.talker_config)
    return model


class Qwen3WholeSpeech:
    """/v1/audio/speech for Qwen3-Omni: the talker speaks a text we dictate. The talker reads the
    thinker's embeddings of the reply, never its hidden states (a text prompt has no media for
    `hidden_projection`), so the thinker does not run at all: the prompt and the text are
    embedded, the talker runs to its end, Code2Wav decodes the whole utterance."""

    def __init__(self, model: OmniModel, settings: Qwen3SpeechSettings, context_length: int):
        self.model, self.settings, self.context_length = model, settings, context_length

    @torch.inference_mode()
    def speak_text(self, prompt, text: str, voice: Qwen3Voice, seed: int | None = None) -> np.ndarray | None:
        """prompt: the OmniPrompt asking to say `text` (its reply would be `text`)."""
        talker, embed = self.model.talker, self.model.thinker.model.embed_tokens
        reply = self.model.tokenizer.encode(text)
        if not reply:
            return None
        if len(prompt) + len(reply) >= self.context_length:
            raise EngineError(f"{len(prompt) + len(reply)} tokens do not fit the context of {self.context_length}",
                              param="input", code="context_length_exceeded")
        ids = torch.tensor(prompt.input_ids, device=talker.device)
        reply_embeds = embed(torch.tensor(reply, device=talker.device))
        prefill = build_talker_prefill(talker, embed, ids, embed(ids), reply_embeds[:1], voice.speaker_id)
        text_inputs = new_talker_text_inputs(talker, embed, prefill)
        for reply_embed in reply_embeds[1:]:
            text_inputs.push(talker.text_projection(reply_embed.to(talker.dtype)))
        text_inputs.finish()
        s = self.settings
        cache = talker.make_cache(1, prefill.length + s.talker_max_new_tokens + 1)
        predictor_cache = talker.make_predictor_cache(1)
        stream = start_qwen3_talker_stream(talker, prefill, text_inputs, cache, 0, s.talker_sampling,
                                           s.predictor_sampling, seed, s.talker_max_new_tokens)
        while not stream.finished:
            qwen3_talker_step(talker, [stream], cache, predictor_cache)
        if not stream.frames:
            return None
        code2wav = self.model.token2wav
        codes = torch.tensor(stream.frames, device=next(code2wav.parameters()).device).T[None]
        return code2wav(codes)[0, 0].float().cpu().numpy().astype(np.float32)


def code2wav_dtype(setting: str) -> torch.dtype:
    """OMNILIVE_SPEECH_DTYPE for Code2Wav: "auto" = float32. bf16 decodes 3-10x faster on an AMX
    CPU, but on random weights its audio is far from float32's (SNR 6 dB, log-mel 0.4:
    bench/code2wav_bf16_qwen3_omni.py) and no real checkpoint was at hand to tell whether that
    is the random vocoder amplifying rounding; so it is opt-in ("bfloat16") until measured."""
    return torch.float32 if setting == "auto" else resolve_dtype(setting)


def qwen3_speech_model(talker: Qwen3OmniTalker, code2wav: Qwen3OmniCode2Wav, settings) -> Qwen3SpeechModel:
    """How a Qwen3-Omni model speaks on the engine (settings: server settings); Code2Wav is cast
    to the speech dtype here (loaded in float32)."""
    code2wav.to(code2wav_dtype(settings.speech_dtype))
    speech = Qwen3SpeechSettings(chunk_frames=settings.code2wav_chunk_frames,
                                 first_chunk_frames=settings.code2wav_first_chunk_frames)
    return Qwen3SpeechModel(talker, code2wav, speech)

"""Browser tests: Debian's chromium driven by Playwright against a real `omnilive serve`.

The microphone and camera are Chromium's fake devices playing files made here: an espeak-ng
question as a 48 kHz WAV (with silence after it, so the server's VAD ends the turn) and a
.y4m clip of a printed sign. A test that must speak when something happens (over the reply,
for barge-in) gets a scripted microphone instead (`spoken_clips`, `say`). Screenshots of each
state go to test-artifacts/web/.
"""

from __future__ import annotations

import base64
import contextlib
import json

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.server_process import ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
WEB_API_KEY = "web-test-key"
WEB_MAX_MEDIA_BYTES = 2 * 1024 * 1024
SIGN_WORD = "PINEAPPLE"

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]

needs_browser = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or not shutil.which("espeak-ng") or not shutil.which("ffmpeg"),
    reason="needs Debian chromium, espeak-ng and ffmpeg",
)


@dataclass(frozen=True)
class WebAssets:
    sign_png: Path  # a printed sign: "The password is PINEAPPLE"
    sign_y4m: Path  # the same sign as a camera clip
    spider_question_wav: Path  # "How many legs does a spider have?"
    sign_question_wav: Path  # "What is the password written on the sign?"
    oversized_png: Path  # over the test server's media limit
    story_request_wav: Path  # "Please tell me a long story about a dragon."
    interruption_wav: Path  # "Stop. That is enough, thank you."


def _spoken_wav(text: str, out: Path, lead_s: float = 1.0) -> Path:
    """48 kHz mono PCM16 (the fake device's native rate): `lead_s` of silence, `text`, 4 s of
    silence (so the server's VAD ends the turn)."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    pad = f"adelay={round(lead_s * 1000)},apad=pad_dur=4" if lead_s else "apad=pad_dur=4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(raw), "-af", pad,
                    "-ar", "48000", "-ac", "1", "-c:a", "pcm_s16le", str(out)], check=True)
    return out


def _sign_filter() -> str:
    text = f"drawtext=fontfile={FONT}:fontcolor=black"
    return f"{text}:text='The password is':fontsize=48:x=40:y=150,{text}:text='{SIGN_WORD}':fontsize=64:x=40:y=250"


@pytest.fixture(scope="session")
def web_assets(tmp_path_factory) -> WebAssets:
    root = tmp_path_factory.mktemp("web-assets")
    blank = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i"]
    sign_png, sign_y4m = root / "sign.png", root / "sign.y4m"
    subprocess.run([*blank, "color=white:s=640x480:d=1", "-vf", _sign_filter(), "-frames:v", "1", str(sign_png)], check=True)
    subprocess.run([*blank, "color=white:s=640x480:r=10:d=1", "-vf", _sign_filter(), "-pix_fmt", "yuv420p", str(sign_y4m)],
                   check=True)
    oversized = root / "huge.png"
    oversized.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(WEB_MAX_MEDIA_BYTES + 1024))
    return WebAssets(
        sign_png, sign_y4m,
        _spoken_wav("How many legs does a spider have?", root / "spider.wav"),
        _spoken_wav("What is the password written on the sign?", root / "sign-question.wav"),
        oversized,
        _spoken_wav("Please tell me a long story about a dragon.", root / "story.wav"),
        _spoken_wav("Stop. That is enough, thank you.", root / "stop.wav", lead_s=0),
    )


@pytest.fixture(scope="session")
def web_server(tmp_path_factory):
    """A server of its own (SQLite history in its data dir), which tests may restart."""
    server = ServerProcess(tmp_path_factory.mktemp("web-data"), api_key=WEB_API_KEY,
                           env={"OMNILIVE_MAX_MEDIA_BYTES": str(WEB_MAX_MEDIA_BYTES)})
    with server:
        yield server


@dataclass
class Browser:
    """Opens pages on the test server with the API key already saved, as a returning user's."""

    playwright: object
    server: ServerProcess
    user_data_root: Path
    contexts: list = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def open(self, *, microphone_wav: Path | None = None, camera_y4m: Path | None = None,
             viewport: dict | None = None, api_key: str | None = WEB_API_KEY, settings: dict | None = None,
             spoken_clips: dict[str, Path] | None = None):
        """`microphone_wav` plays once as the microphone from the moment it opens; with
        `spoken_clips` the microphone is quiet until the test says one (`say(page, name)`)."""
        flags = list(CHROMIUM_FLAGS)
        if microphone_wav is not None:
            flags.append(f"--use-file-for-fake-audio-capture={microphone_wav}%noloop")
        if camera_y4m is not None:
            flags.append(f"--use-file-for-fake-video-capture={camera_y4m}")
        profile = self.user_data_root / f"profile-{len(self.contexts)}"  # a fresh user-data-dir each time
        context = self.playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=flags, headless=True,
            viewport=viewport or {"width": 1200, "height": 800},
        )
        self.contexts.append(context)
        if api_key:
            context.add_init_script(f"localStorage.setItem('omnilive.apiKey', {api_key!r})")
        if spoken_clips:
            context.add_init_script(_scripted_microphone(spoken_clips))
        if settings:  # as if saved in the settings dialog
            context.add_init_script(f"localStorage.setItem('omnilive.settings', {json.dumps(json.dumps(settings))})")
        page = context.pages[0] if context.pages else context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.goto(self.server.url + "/")
        page.wait_for_selector("#app[data-ready='true']", timeout=20_000)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@contextlib.contextmanager
def browser_on(server: ServerProcess, tmp_path: Path):
    """A Browser on `server`; at the end no page may have thrown an uncaught error."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        opened = Browser(playwright, server, tmp_path)
        try:
            yield opened
        finally:
            opened.close()
        assert not opened.page_errors, f"uncaught errors in the page: {opened.page_errors}"


@pytest.fixture
def browser(web_server, tmp_path):
    with browser_on(web_server, tmp_path) as opened:
        yield opened


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _scripted_microphone(clips: dict[str, Path]) -> str:
    """A page script: getUserMedia's audio comes from a Web Audio graph that is silent until
    `window.testMicrophone.say(name)` plays a clip into it (the promise resolves at its end).
    Chromium's fake device can only play one file from the start; a person talks when
    something happens, such as the reply being heard."""
    encoded = {name: base64.b64encode(path.read_bytes()).decode() for name, path in clips.items()}
    return """(() => {
      const clips = %s;
      let context = null, microphone = null;
      const open = () => {
        context = context || new AudioContext({ sampleRate: 48000 });
        microphone = microphone || context.createMediaStreamDestination();
        return context.resume();
      };
      const camera = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = async (constraints) => {
        await open();
        const tracks = microphone.stream.getAudioTracks().map((track) => track.clone());
        if (constraints.video) tracks.push(...(await camera({ video: constraints.video })).getVideoTracks());
        return new MediaStream(tracks);
      };
      window.testMicrophone = {
        async say(name) {
          await open();
          const bytes = Uint8Array.from(atob(clips[name]), (c) => c.charCodeAt(0));
          const source = context.createBufferSource();
          source.buffer = await context.decodeAudioData(bytes.buffer);
          source.connect(microphone);
          const ended = new Promise((resolve) => (source.onended = resolve));
          source.start();
          await ended;
        },
      };
    })();""" % json.dumps(encoded)


def say(page, clip: str, wait: bool = True) -> None:
    """Speaks a clip of `spoken_clips` into the page's microphone; returns when it has been said,
    or at once with wait=False (to watch what the page does while the user is still talking)."""
    if wait:
        page.evaluate("(name) => window.testMicrophone.say(name)", clip)
    else:
        page.evaluate("(name) => { window.testMicrophone.say(name); }", clip)


def app_state(page) -> dict[str, str]:
    """The data-* attributes the page keeps on #app for tests and styling."""
    return page.evaluate("() => ({ ...document.getElementById('app').dataset })")

"""Settings come from defaults < OMNILIVE_* environment < CLI flags; the CLI builds the same object."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omnilive.cli import build_parser, settings_from_args
from omnilive.server.settings import Settings


def settings_for(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_flags_override_environment_which_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNILIVE_PORT", "9001")
    monkeypatch.setenv("OMNILIVE_LLM", "smollm2-135m")
    monkeypatch.setenv("OMNILIVE_CORS_ORIGINS", "http://a.test, http://b.test")
    settings = settings_for("--port", "9002", "--data-dir", str(tmp_path), "--api-key", "k")
    assert settings.port == 9002  # flag beats environment
    assert settings.llm == "smollm2-135m"  # environment beats default
    assert settings.cors_origins == ["http://a.test", "http://b.test"]
    assert settings.host == "127.0.0.1" and settings.model == "default"
    assert settings.data_dir == tmp_path.resolve()
    assert settings.models_dir == tmp_path.resolve() / "models"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'omnilive.db'}"
    assert settings.api_key.get_secret_value() == "k" and "k'" not in repr(settings)


def test_media_limits_follow_settings(monkeypatch):
    monkeypatch.setenv("OMNILIVE_ALLOW_REMOTE_MEDIA_URLS", "true")
    monkeypatch.setenv("OMNILIVE_MAX_AUDIO_SECONDS", "30")
    limits = Settings().media_limits()
    assert limits.allow_remote_urls and limits.max_audio_seconds == 30


def test_invalid_values_are_refused(monkeypatch):
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        build_parser().parse_args(["serve", "--dtype", "float8"])
    monkeypatch.setenv("OMNILIVE_PORT", "not-a-port")
    with pytest.raises(ValueError):
        Settings()


def test_version_and_bad_env_from_the_command_line():
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    version = subprocess.run([sys.executable, "-m", "omnilive", "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("omnilive ")
    bad = subprocess.run([sys.executable, "-m", "omnilive", "serve"], capture_output=True, text=True,
                         env={**env, "OMNILIVE_PORT": "70000"})
    assert bad.returncode == 2 and "port" in bad.stderr


def test_ray_flags_and_environment(monkeypatch):
    monkeypatch.setenv("OMNILIVE_REPLICAS", "3")
    monkeypatch.setenv("OMNILIVE_RAY_ADDRESS", "10.0.0.1:6379")
    from_env = settings_for()
    assert not from_env.ray and from_env.replicas == 3 and from_env.ray_address == "10.0.0.1:6379"
    flags = settings_for("--ray", "--ray-address", "auto", "--replicas", "2", "--threads", "1")
    assert flags.ray and flags.ray_address == "auto" and flags.replicas == 2 and flags.threads == 1
    monkeypatch.setenv("OMNILIVE_RAY", "true")
    assert settings_for().ray
    with pytest.raises(ValueError):
        settings_for("--replicas", "0")


def test_autoscaling_and_stages_settings(monkeypatch):
    assert settings_for("--ray").autoscaling is None  # a fixed number of replicas
    scaled = settings_for("--replicas", "2", "--max-replicas", "4", "--target-ongoing-requests", "3")
    assert scaled.autoscaling == {"min_replicas": 2, "max_replicas": 4, "initial_replicas": 2,
                                  "target_ongoing_requests": 3.0}
    assert settings_for("--min-replicas", "0", "--max-replicas", "1").autoscaling["min_replicas"] == 0
    monkeypatch.setenv("OMNILIVE_STAGES", "thinker=2, speech=1")
    assert settings_for().stages == {"thinker": 2, "speech": 1}
    assert settings_for("--stages", "speech=3,thinker=1").stages == {"thinker": 1, "speech": 3}
    for bad in (["--stages", "thinker=2"], ["--stages", "thinker=x,speech=1"], ["--stages", "thinker=0,speech=1"],
                ["--stages", "talker=1,speech=1"], ["--min-replicas", "3", "--max-replicas", "2"]):
        with pytest.raises(ValueError):
            settings_for(*bad)


def test_stages_of_the_embedded_default_are_refused_before_ray_starts(capsys):
    from omnilive.cli import main

    assert main(["serve", "--ray", "--stages", "thinker=1,speech=1"]) == 2
    assert "--stages needs a Qwen2.5-Omni or Qwen3-Omni checkpoint" in capsys.readouterr().err

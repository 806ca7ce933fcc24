"""The citytel command as a newcomer meets it: help, version, settings, and safe file writes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from citytel.config import Settings
from citytel.settings_help import matching

ROOT = Path(__file__).parents[2]

# Each command, and the settings its help must list (as patterns over the Settings model).
COMMANDS = {
    ("migrate",): ("database_url", "timescale_*"),
    ("ingest",): ("database_*", "mqtt_*", "ingest_*", "sensor_profiles_dir"),
    ("api",): ("database_*", "api_*"),
    ("simulate",): ("mqtt_*", "fleet_file"),
    ("fleet", "import"): ("database_url", "fleet_service_area", "sensor_profiles_dir"),
    ("demo",): ("*",),
}


def citytel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m citytel`` with ``args`` in a clean CITYTEL_* environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CITYTEL_")}
    return subprocess.run(
        [sys.executable, "-m", "citytel", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_version_prints_the_package_version() -> None:
    """--version prints the installed package's version."""
    done = citytel("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"citytel {version('citytel')}"


def test_top_level_help_has_no_docstring_markup() -> None:
    """--help reads as prose: no reStructuredText double backquotes, every command listed."""
    done = citytel("--help")
    assert done.returncode == 0
    assert "``" not in done.stdout
    for command in ("migrate", "ingest", "api", "simulate", "fleet", "demo", "settings"):
        assert f"    {command} " in done.stdout


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_each_command_describes_itself_and_lists_its_settings(command: tuple[str, ...]) -> None:
    """A command's help has a description and every CITYTEL_* setting it reads, with defaults."""
    done = citytel(*command, "--help")
    assert done.returncode == 0
    description = done.stdout.split("\n\n")[1]
    assert not description.startswith(("options:", "positional")), done.stdout
    assert "``" not in done.stdout
    names = matching(COMMANDS[command])
    assert names
    for name in names:
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        line = next(x for x in done.stdout.splitlines() if f"CITYTEL_{name.upper()} " in x)
        if default is not None and name != "database_url":
            assert f"default: {default}" in line


def test_help_masks_the_default_database_password() -> None:
    """The default database URL's password is not printed in help."""
    done = citytel("migrate", "--help")
    assert "postgresql://postgres:***@127.0.0.1:5432/citytel" in done.stdout
    assert ":postgres@" not in done.stdout


def test_settings_prints_effective_values_with_secrets_masked() -> None:
    """``citytel settings`` shows what is set, where it came from, and never a password."""
    done = citytel(
        "settings",
        env={
            "CITYTEL_DATABASE_URL": "postgresql://city:s3cret-db@db.example:5432/citytel",
            "CITYTEL_MQTT_URL": "mqtt://gw:s3cret-url@broker.example:1884",
            "CITYTEL_MQTT_PASSWORD": "s3cret-mqtt",
            "CITYTEL_API_PORT": "9090",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "postgresql://city:***@db.example:5432/citytel  (set)" in lines["CITYTEL_DATABASE_URL"]
    assert "mqtt://gw:***@broker.example:1884" in lines["CITYTEL_MQTT_URL"]
    assert "***  (set)" in lines["CITYTEL_MQTT_PASSWORD"]
    assert "9090  (set)" in lines["CITYTEL_API_PORT"]
    assert "(default)" in lines["CITYTEL_LOG_LEVEL"]
    assert set(lines) == {f"CITYTEL_{name.upper()}" for name in Settings.model_fields}


def test_fleet_generate_needs_a_path_and_never_overwrites_without_force(tmp_path: Path) -> None:
    """generate writes where it is told, refuses an existing file, and overwrites with --force."""
    assert citytel("fleet", "generate", "--containers", "2", "--spots", "2").returncode == 2
    out = tmp_path / "mine.geojson"
    out.write_text("my own fleet", encoding="utf-8")
    refused = citytel("fleet", "generate", "--out", str(out), "--containers", "2", "--spots", "2")
    assert refused.returncode == 2
    assert "exists; pass --force" in refused.stderr
    assert out.read_text(encoding="utf-8") == "my own fleet"
    forced = citytel(
        "fleet", "generate", "--out", str(out), "--force", "--containers", "2", "--spots", "2"
    )
    assert forced.returncode == 0, forced.stderr
    written = json.loads(out.read_text(encoding="utf-8"))
    assert len(written["features"]) == 4


def test_the_demo_simulates_a_few_malformed_messages() -> None:
    """The demo's simulator sends broken messages at a low rate: the operator view has letters."""
    from citytel.cli import build_parser, demo_simulator
    from simulators.cli import add_arguments

    demo = build_parser().parse_args(["demo"])
    command = demo_simulator(["citytel"], demo)
    assert command[:2] == ["citytel", "simulate"]
    simulate = argparse.ArgumentParser()
    add_arguments(simulate)
    simulated = simulate.parse_args(command[2:])
    assert 0 < simulated.malformed_ratio <= 0.01
    assert simulated.rate == demo.rate

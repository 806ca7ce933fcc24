"""Fleet files against a real registry: named refusals, swaps, dry runs, nothing half-imported."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from citytel.errors import ConfigurationError
from citytel.storage.fleet import import_fleet
from tests.integration.conftest import feature

pytestmark = pytest.mark.integration

CASABLANCA = (-7.75, 33.45, -7.45, 33.65)
MODELS = {"milesight-em310-udl", "nwave-nps310sm"}


def container(ident: str, lon: float, eui: str, **props: Any) -> dict[str, Any]:
    """A container with a level sensor, near downtown Casablanca."""
    return feature(
        "waste_container",
        ident,
        lon,
        33.5731,
        "maarif",
        capacity_l=1100,
        depth_mm=1200,
        device_model="milesight-em310-udl",
        dev_eui=eui,
        network_device_id=ident.lower(),
        **props,
    )


def spot(ident: str, lon: float, eui: str) -> dict[str, Any]:
    """A parking spot with an occupancy sensor."""
    return feature(
        "parking_spot",
        ident,
        lon,
        33.5731,
        "anfa",
        device_model="nwave-nps310sm",
        dev_eui=eui,
        network_device_id=ident.lower(),
    )


def good_fleet() -> dict[str, Any]:
    """Three containers and two spots, all valid."""
    return {
        "type": "FeatureCollection",
        "features": [
            container("WC-1", -7.600, "00000000000000A1"),
            container("WC-2", -7.601, "00000000000000A2"),
            container("WC-3", -7.602, "00000000000000A3"),
            spot("PS-1", -7.590, "00000000000000B1"),
            spot("PS-2", -7.591, "00000000000000B2"),
        ],
    }


def write(path: Path, document: dict[str, Any], encoding: str = "utf-8") -> Path:
    """The document as a fleet file in ``encoding``."""
    path.write_bytes(json.dumps(document).encode(encoding))
    return path


async def registry(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    """Everything the registry holds, to compare before and after."""
    rows = await pool.fetch(
        "SELECT 'c', id, ST_AsText(location), zone FROM containers UNION ALL "
        "SELECT 's', id, ST_AsText(location), zone FROM parking_spots ORDER BY 1, 2"
    )
    sensors = await pool.fetch(
        "SELECT coalesce(container_id, spot_id), model, dev_eui, network_device_id "
        "FROM sensors ORDER BY 1"
    )
    return [tuple(r) for r in rows] + [tuple(r) for r in sensors]


async def bindings(pool: asyncpg.Pool) -> dict[str, str]:
    """Device id to DevEUI."""
    rows = await pool.fetch("SELECT coalesce(container_id, spot_id), dev_eui FROM sensors")
    return {r[0]: r[1] for r in rows}


def _props(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        document["features"][index]["properties"].update(changes)

    return edit


def _coordinates(index: int, pair: list[float]) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        document["features"][index]["geometry"]["coordinates"] = pair

    return edit


def _drop_geometry(document: dict[str, Any]) -> None:
    document["features"][2]["geometry"] = None


# Each malformed fleet: how it is broken, and what the refusal must say (feature, field, fix).
MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "duplicate id": (
        _props(2, id="WC-1"),
        ["feature 0 (WC-1) and feature 2 (WC-1)", "properties.id 'WC-1'", "correct one"],
    ),
    "duplicate dev_eui": (
        _props(4, dev_eui="00000000000000A2"),
        ["feature 1 (WC-2) and feature 4 (PS-2)", "properties.dev_eui", "correct one"],
    ),
    "duplicate network_device_id": (
        _props(1, network_device_id="wc-1"),
        ["feature 0 (WC-1) and feature 1 (WC-2)", "properties.network_device_id 'wc-1'"],
    ),
    "swapped lat/lon": (
        _coordinates(1, [33.5731, -7.601]),
        ["feature 1 (WC-2)", "geometry.coordinates", "look swapped", "write [-7.601, 33.5731]"],
    ),
    "outside the service area": (
        _coordinates(3, [2.35, 48.85]),
        ["feature 3 (PS-1)", "outside the service area", "CITYTEL_FLEET_SERVICE_AREA"],
    ),
    "off the globe": (
        _coordinates(0, [200.0, 95.0]),
        ["feature 0 (WC-1)", "not on Earth"],
    ),
    "no geometry": (
        _drop_geometry,
        ["feature 2 (WC-3)", "geometry must be a Point", "[lon, lat]"],
    ),
    "unknown sensor model": (
        _props(3, device_model="acme-9000"),
        ["feature 3 (PS-1)", "properties.device_model 'acme-9000'", "use one of"],
    ),
    "bad DevEUI": (
        _props(0, dev_eui="12345"),
        ["feature 0 (WC-1)", "properties.dev_eui '12345'", "16 hexadecimal digits"],
    ),
    "missing capacity": (
        _props(1, capacity_l=None),
        ["feature 1 (WC-2)", "properties.capacity_l", "whole number > 0"],
    ),
    "unknown kind": (
        _props(4, kind="bench"),
        ["feature 4 (PS-2)", "properties.kind is 'bench'", "'waste_container' or 'parking_spot'"],
    ),
    "NUL in a name": (
        _props(2, zone="maa\x00rif"),
        ["feature 2:", "NUL character"],
    ),
    "bad id": (
        _props(0, id="no spaces allowed"),
        ["feature 0:", "properties.id 'no spaces allowed'", "letters"],
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_fleet_is_refused_by_name_and_changes_nothing(
    pool: asyncpg.Pool, tmp_path: Path, case: str
) -> None:
    """Each class of malformed file gets its own error naming the feature, the field and the fix."""
    await import_fleet(pool, write(tmp_path / "good.geojson", good_fleet()))
    before = await registry(pool)
    broken, expected = MALFORMED[case]
    document = good_fleet()
    # A valid change alongside the fault: it must not be written either.
    document["features"][0]["geometry"]["coordinates"] = [-7.61, 33.57]
    broken(document)
    path = write(tmp_path / "broken.geojson", document)
    with pytest.raises(ConfigurationError) as refused:
        await import_fleet(pool, path, models=MODELS, area=CASABLANCA)
    for words in expected:
        assert words in str(refused.value)
    assert "nothing imported" in str(refused.value)
    assert await registry(pool) == before


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
async def test_utf16_and_bom_files_are_read(
    pool: asyncpg.Pool, tmp_path: Path, encoding: str
) -> None:
    """A file saved as UTF-16 (with or without a byte-order mark) or UTF-8 with a BOM imports."""
    result = await import_fleet(pool, write(tmp_path / "f.geojson", good_fleet(), encoding))
    assert (result.containers, result.spots) == (3, 2)
    assert len(await bindings(pool)) == 5


async def test_unreadable_bytes_are_refused_clearly(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Bytes that are neither UTF-8 nor UTF-16 get a sentence saying how to save the file."""
    path = tmp_path / "latin1.geojson"
    path.write_bytes(json.dumps(good_fleet()).replace("maarif", "ma\u00e2rif").encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"not UTF-8 or UTF-16 text.*save it as UTF-8"):
        await import_fleet(pool, path)


async def test_not_json_names_line_and_column(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A syntax error says where it is."""
    path = tmp_path / "bad.geojson"
    path.write_text('{"type": "FeatureCollection",\n "features": [}\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"not valid JSON: .* line 2, column 15"):
        await import_fleet(pool, path)


async def test_sensor_swap_between_two_devices_imports_in_one_go(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Two containers exchanging their sensors (DevEUI and network id) is one valid import."""
    await import_fleet(pool, write(tmp_path / "a.geojson", good_fleet()))
    swapped = good_fleet()
    first, second = swapped["features"][0]["properties"], swapped["features"][1]["properties"]
    for name in ("dev_eui", "network_device_id"):
        first[name], second[name] = second[name], first[name]
    result = await import_fleet(pool, write(tmp_path / "b.geojson", swapped))
    assert await bindings(pool) == {
        "WC-1": "00000000000000A2",
        "WC-2": "00000000000000A1",
        "WC-3": "00000000000000A3",
        "PS-1": "00000000000000B1",
        "PS-2": "00000000000000B2",
    }
    assert sorted(result.changes.rebound) == ["WC-1", "WC-2"]


async def test_sensor_kept_by_an_unlisted_device_is_refused_naming_both(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A DevEUI that the registry keeps on a device the file does not rebind is refused."""
    await import_fleet(pool, write(tmp_path / "a.geojson", good_fleet()))
    before = await registry(pool)
    other = {
        "type": "FeatureCollection",
        "features": [container("WC-9", -7.61, "00000000000000A3")],
    }
    with pytest.raises(ConfigurationError) as refused:
        await import_fleet(pool, write(tmp_path / "b.geojson", other))
    message = str(refused.value)
    assert "feature 0 (WC-9): properties.dev_eui '00000000000000A3'" in message
    assert "sensor of container WC-3 in the registry" in message
    assert await registry(pool) == before


async def test_dry_run_reports_changes_and_writes_nothing(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """--dry-run says what would be added, moved, changed and rebound, and the registry stays."""
    await import_fleet(pool, write(tmp_path / "a.geojson", good_fleet()))
    before = await registry(pool)
    edited = copy.deepcopy(good_fleet())
    edited["features"][0]["geometry"]["coordinates"] = [-7.65, 33.58]  # WC-1 moved
    edited["features"][1]["properties"]["zone"] = "anfa"  # WC-2 changed
    edited["features"][3]["properties"]["dev_eui"] = "00000000000000C1"  # PS-1 rebound
    del edited["features"][4]  # PS-2 not in the file
    edited["features"].append(container("WC-4", -7.603, "00000000000000A4"))  # added
    result = await import_fleet(pool, write(tmp_path / "b.geojson", edited), dry_run=True)
    assert result.dry_run
    changes = result.changes
    assert (changes.added, changes.moved, changes.changed, changes.rebound) == (
        ["WC-4"],
        ["WC-1"],
        ["WC-2"],
        ["PS-1"],
    )
    assert (changes.unchanged, changes.not_in_file) == (1, 1)
    assert await registry(pool) == before
    assert "added: 1 (WC-4)" in changes.summary()


async def test_cli_dry_run_prints_the_changes_and_writes_nothing(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """``citytel fleet import --dry-run`` prints what would change; a real import then writes."""
    path = write(tmp_path / "a.geojson", good_fleet())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYTEL_")}
    env["CITYTEL_DATABASE_URL"] = database_url

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "citytel", "fleet", "import", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    dry = await asyncio.to_thread(cli, "--dry-run", str(path))
    assert dry.returncode == 0, dry.stderr
    assert "would import (dry run, nothing written) 3 containers and 2 parking spots" in dry.stdout
    assert "added: 5 (WC-1, WC-2, WC-3, PS-1, PS-2)" in dry.stdout
    assert await registry(pool) == []
    done = await asyncio.to_thread(cli, str(path))
    assert done.returncode == 0, done.stderr
    assert "imported 3 containers and 2 parking spots" in done.stdout
    assert len(await bindings(pool)) == 5

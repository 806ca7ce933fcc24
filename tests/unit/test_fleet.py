"""The demo fleet: deterministic, on land in Casablanca, and dense enough downtown."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from simulators.fleet import (
    CASABLANCA_BBOX,
    LEVEL_MODELS,
    OCCUPANCY_MODELS,
    ZONES,
    ZONES_BY_SLUG,
    Fleet,
    distance_m,
    generate_fleet,
    load_fleet,
    on_land,
    write_fleet,
)

DOWNTOWN = (33.5731, -7.5898)
BUNDLED = Path(__file__).parents[2] / "sensors" / "fleet" / "casablanca.geojson"


@pytest.fixture(scope="module")
def collection() -> dict[str, Any]:
    return generate_fleet()


def test_same_seed_gives_same_fleet() -> None:
    """The fleet is a function of its seed."""
    assert generate_fleet(seed=5, containers=50, spots=50) == generate_fleet(
        seed=5, containers=50, spots=50
    )
    assert generate_fleet(seed=5, containers=50, spots=50) != generate_fleet(
        seed=6, containers=50, spots=50
    )


def test_ids_are_unique_and_zero_padded(collection: dict[str, Any]) -> None:
    """Every device has its own id; containers and spots are numbered from 00001."""
    ids = [f["properties"]["id"] for f in collection["features"]]
    assert len(ids) == len(set(ids)) == 7000
    assert ids[0] == "CAS-WC-00001"
    assert ids[-1] == "CAS-PS-05000"


def test_points_are_on_land_in_casablanca(collection: dict[str, Any]) -> None:
    """Every point lies inside the city's box, south of the shore, at most 6 decimals."""
    min_lon, min_lat, max_lon, max_lat = CASABLANCA_BBOX
    for feature in collection["features"]:
        lon, lat = feature["geometry"]["coordinates"]
        assert min_lon <= lon <= max_lon
        assert min_lat <= lat <= max_lat
        assert on_land(lat, lon)
        assert round(lon, 6) == lon
        assert round(lat, 6) == lat


def test_zone_centres_are_on_land() -> None:
    """No district is centred in the Atlantic."""
    assert all(on_land(zone.lat, zone.lon) for zone in ZONES)
    assert not on_land(33.6085, -7.6325)  # the Hassan II mosque's seaward terrace
    assert not on_land(33.62, -7.60)  # the port's outer basin


def test_properties_follow_the_importer_format(collection: dict[str, Any]) -> None:
    """Each feature carries the properties its kind needs, with allowed values."""
    for feature in collection["features"]:
        p = feature["properties"]
        assert feature["geometry"]["type"] == "Point"
        assert p["zone"] in ZONES_BY_SLUG
        if p["kind"] == "waste_container":
            assert p["capacity_l"] in {240, 660, 1100, 3000}
            assert 900 <= p["depth_mm"] <= 1700
            assert p["waste_kind"] in {"mixed", "recyclable", "glass", "organic"}
        else:
            assert p["kind"] == "parking_spot"
            assert p["category"] in {"standard", "disabled", "delivery", "ev_charging"}


def test_devices_carry_their_sensor_binding(collection: dict[str, Any]) -> None:
    """Each device names a profiled sensor model, a unique DevEUI and a network device id."""
    profiles = {path.stem for path in (BUNDLED.parents[1] / "profiles").glob("*.toml")}
    euis = set()
    for feature in collection["features"]:
        p = feature["properties"]
        level = p["kind"] == "waste_container"
        assert p["device_model"] in (LEVEL_MODELS if level else OCCUPANCY_MODELS)
        assert p["device_model"] in profiles
        assert re.fullmatch(r"[0-9A-F]{16}", p["dev_eui"])
        assert p["network_device_id"] == p["id"].lower()
        assert p.get("full_mark_mm", 0) < p.get("depth_mm", 1)
        euis.add(p["dev_eui"])
    assert len(euis) == len(collection["features"])
    fleet = Fleet.from_geojson(collection)
    assert fleet.containers[0].sensor is not None
    assert fleet.containers[0].depth_mm == collection["features"][0]["properties"]["depth_mm"]


def test_every_zone_is_used(collection: dict[str, Any]) -> None:
    """Devices are spread over all the districts."""
    zones = Counter(f["properties"]["zone"] for f in collection["features"])
    assert set(zones) == set(ZONES_BY_SLUG)


def test_downtown_has_dozens_of_spots(collection: dict[str, Any]) -> None:
    """The demo query point has dozens of spots within 800 m."""
    fleet = Fleet.from_geojson(collection)
    near = [s for s in fleet.spots if distance_m(*DOWNTOWN, s.lat, s.lon) <= 800]
    assert len(near) >= 50


def test_written_file_round_trips(tmp_path: Path) -> None:
    """The written file is valid GeoJSON, one feature per line, and loads back."""
    path = write_fleet(tmp_path / "fleet.geojson", 1, 3, 4)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == generate_fleet(seed=1, containers=3, spots=4)
    assert len(text.splitlines()) == 3 + 4 + 2
    fleet = load_fleet(path)
    assert (len(fleet.containers), len(fleet.spots)) == (3, 4)
    assert len(fleet.head(2, 1).spots) == 1


def test_bundled_file_is_the_default_fleet(collection: dict[str, Any]) -> None:
    """The committed fleet file is exactly what the defaults generate."""
    assert json.loads(BUNDLED.read_text(encoding="utf-8")) == collection

#!/usr/bin/env bash
# Vendor MapLibre GL JS into the operations console (src/citytel/api/console/vendor/), so that
# the console needs no CDN and no build step. Reproducible: the package is fetched from the npm
# registry at the pinned version with `npm pack`, and only its ES-module build, stylesheet and
# licence are copied, unchanged. Run it again with another version to upgrade.
set -euo pipefail

VERSION=${1:-6.20.0}
cd "$(dirname "$0")/.."
DEST=src/citytel/api/console/vendor/maplibre-gl

command -v npm >/dev/null || { echo "npm is needed to fetch maplibre-gl" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "maplibre-gl@$VERSION" >/dev/null && tar -xzf maplibre-gl-*.tgz)
rm -rf "$DEST"
mkdir -p "$DEST"
# The module build loads its worker from beside itself (maplibre-gl-worker.mjs).
cp "$work/package/dist/maplibre-gl.mjs" "$work/package/dist/maplibre-gl-worker.mjs" \
   "$work/package/dist/maplibre-gl.css" "$work/package/LICENSE.txt" "$DEST/"
echo "$VERSION" > "$DEST/VERSION"
echo "maplibre-gl $VERSION vendored into $DEST"

#!/usr/bin/env bash
# Vendor the interactive API documentation (Swagger UI for /docs, ReDoc for /redoc) into the
# package, so that both pages load every asset from citytel itself and work offline.
# Pinned versions; each package's licence files are kept next to its files.
# Re-run after changing a version: `bash scripts/vendor_docs.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
SWAGGER_UI_VERSION=5.35.0
REDOC_VERSION=2.5.2
target=src/citytel/api/static/docs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$SWAGGER_UI_VERSION" "redoc@$REDOC_VERSION" >/dev/null)
rm -rf "$target" && mkdir -p "$target/swagger-ui" "$target/redoc"
tar xzf "$work/swagger-ui-dist-$SWAGGER_UI_VERSION.tgz" -C "$work"
for f in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE swagger-ui-bundle.js.LICENSE.txt; do
  cp "$work/package/$f" "$target/swagger-ui/"
done
rm -rf "$work/package"
tar xzf "$work/redoc-$REDOC_VERSION.tgz" -C "$work"
for f in bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt LICENSE; do
  cp "$work/package/$f" "$target/redoc/"
done
# ReDoc's side menu shows the "API docs by Redocly" logo from Redocly's CDN, and has no option to
# turn it off: an empty inline image takes its place, so the page makes no request elsewhere.
logo='https://cdn.redoc.ly/redoc/logo-mini.svg'
grep -q "$logo" "$target/redoc/redoc.standalone.js"
sed -i "s|$logo|data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E|" \
  "$target/redoc/redoc.standalone.js"
printf 'swagger-ui-dist %s\nredoc %s\n' "$SWAGGER_UI_VERSION" "$REDOC_VERSION" >"$target/VERSIONS"
echo "vendored swagger-ui-dist $SWAGGER_UI_VERSION and redoc $REDOC_VERSION into $target"

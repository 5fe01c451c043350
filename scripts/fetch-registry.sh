#!/usr/bin/env bash
# Fetch the Apicurio Registry distribution (a Confluent-compatible schema registry) from Maven
# Central into .registry/dist (reused when present). Maven checks the artifact's SHA-1 against
# Central's (-C); the SHA-256 below pins the exact bytes of this release.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="3.0.9"
sha256="2b28181501a20cbf6efcd77f9b7153908fc01f3d3a7c32024c0bd9e1b04c8a43"
dist="$root/.registry/dist"
if [ -f "$dist/.complete" ] && [ -f "$dist/apicurio-registry-app-$version-runner.jar" ]; then
  exit 0
fi
command -v java > /dev/null || { echo "error: java not found; the schema registry needs Java 17+" >&2; exit 1; }
command -v mvn > /dev/null || { echo "error: mvn not found; Maven fetches the schema registry" >&2; exit 1; }
echo "fetching Apicurio Registry $version into $dist ..." >&2
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
# Plugin 2.8 copies the archive without resolving its parent POMs, which Central does not serve.
mvn -q -B -C org.apache.maven.plugins:maven-dependency-plugin:2.8:copy \
  -Dartifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all" -DoutputDirectory="$download"
archive="$download/apicurio-registry-app-$version-all.tar.gz"
echo "$sha256  $archive" | sha256sum -c --quiet - || { echo "error: checksum mismatch for $archive" >&2; exit 1; }
rm -rf "$dist"
mkdir -p "$dist"
tar -xzf "$archive" -C "$dist"
touch "$dist/.complete"

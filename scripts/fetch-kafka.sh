#!/usr/bin/env bash
# Fetch Apache Kafka's broker jars from Maven Central into .kafka/lib (reused when present).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="$root/.kafka/lib"
if compgen -G "$lib/kafka_2.13-*.jar" > /dev/null && [ -f "$lib/.complete" ]; then
  exit 0
fi
command -v java > /dev/null || { echo "error: java not found; the Kafka broker needs Java 17+" >&2; exit 1; }
command -v mvn > /dev/null || { echo "error: mvn not found; Maven fetches the Kafka jars" >&2; exit 1; }
echo "fetching Apache Kafka jars into $lib ..." >&2
rm -rf "$lib"
mvn -q -B -f "$root/scripts/kafka-pom.xml" dependency:copy-dependencies \
  -DoutputDirectory="$lib" -DincludeScope=runtime
touch "$lib/.complete"

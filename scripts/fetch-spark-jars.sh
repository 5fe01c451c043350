#!/usr/bin/env bash
# Fetch Delta Lake's jars for Spark (delta-spark, delta-storage) from Maven Central into
# .spark/jars (reused when present). pyspark brings Spark itself; these two are passed to
# the session with spark.jars (`replay --engine spark`, the equality tests).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="$root/.spark/jars"
if compgen -G "$lib/delta-spark_*.jar" > /dev/null && [ -f "$lib/.complete" ]; then
  exit 0
fi
command -v mvn > /dev/null || { echo "error: mvn not found; Maven fetches the Delta Lake jars" >&2; exit 1; }
echo "fetching Delta Lake jars for Spark into $lib ..." >&2
rm -rf "$lib"
# Only the two jars: their other dependencies are Spark's own, which pyspark ships.
mvn -q -B -f "$root/scripts/spark-pom.xml" dependency:copy-dependencies \
  -DoutputDirectory="$lib" -DincludeScope=runtime -DexcludeTransitive=true
touch "$lib/.complete"

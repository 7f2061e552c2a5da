#!/usr/bin/env bash
# Regenerate everything derived from the models and the chart: the CRDs (crds/, the packaged copy,
# the chart's crds/) and the plain manifests (manifests/). `--check` only reports what is stale.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$root"
if [ "${1:-}" = "--check" ]; then
  "$python" -m controlled_friction.crdgen --check
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  scripts/generate-manifests.sh "$tmp" >/dev/null
  diff -u manifests/crds.yaml "$tmp/crds.yaml"
  diff -u manifests/install.yaml "$tmp/install.yaml"
  echo "manifests up to date"
else
  "$python" -m controlled_friction.crdgen
  scripts/generate-manifests.sh
fi

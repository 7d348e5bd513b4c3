#!/usr/bin/env bash
# buf breaking, offline: a branch is compared with main, main with its previous commit (every
# commit on main keeps the wire contract of the one before).
set -euo pipefail
cd "$(dirname "$0")/.."
branch=$(git rev-parse --abbrev-ref HEAD)
if [ "$branch" != main ] && git rev-parse -q --verify main >/dev/null; then
  against=".git#branch=main"
elif git rev-parse -q --verify HEAD~1 >/dev/null; then
  against=".git#ref=HEAD~1"
else
  echo "buf breaking: no earlier commit in this checkout to compare with (shallow clone?)"
  exit 0
fi
echo "buf breaking against $against"
node_modules/.bin/buf breaking --against "$against"

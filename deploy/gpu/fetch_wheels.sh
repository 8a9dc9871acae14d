#!/usr/bin/env bash
# Fetch, into .whl/ at the repository root, the wheels deploy/gpu/check.sh installs on a GPU machine that
# cannot reach an index: the packages in deploy/gpu/wheels.txt, at the versions constraints.txt pins, for
# that machine's Python (PY_VERSION, default 3.12) on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${PY_VERSION:-3.12}"
mkdir -p .whl
rm -f .whl/*.whl
while read -r name; do
  case "$name" in ''|'#'*) continue ;; esac
  pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt || true)
  if [ -z "$pin" ]; then
    echo "fetch_wheels: $name is not pinned in constraints.txt" >&2
    exit 1
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$pin" 2> >(grep -v "^WARNING: Location" >&2)
done < deploy/gpu/wheels.txt
echo "fetch_wheels: $(ls .whl/*.whl | wc -l) wheels for Python $py in .whl ($(du -sh .whl | cut -f1))"

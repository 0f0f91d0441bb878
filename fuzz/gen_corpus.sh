#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/corpus/<target>/ from real traffic
# (see gen_corpus.c), each file named by the SHA-256 of its contents.
# Files already there stay (minimised crash inputs are kept that way);
# --clean first removes every file whose name is a SHA-256, which includes
# those, so re-add regression inputs after a clean run.
#
# Usage: fuzz/gen_corpus.sh [--clean] [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
clean=0
if [ "${1:-}" = "--clean" ]; then
  clean=1
  shift
fi
build=${1:-build}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja >/dev/null
fi
cmake --build "$build" --target fuzz_gen_corpus >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/fuzz/fuzz_gen_corpus" "$tmp"
for dir in "$tmp"/*/; do
  target=$(basename "$dir")
  out=fuzz/corpus/$target
  mkdir -p "$out"
  if [ "$clean" = 1 ]; then
    find "$out" -maxdepth 1 -type f -name '????????????????????????????????????????????????????????????????' -delete
  fi
  for f in "$dir"*; do
    sum=$(sha256sum "$f" | cut -d' ' -f1)
    cp "$f" "$out/$sum"
  done
  echo "$target: $(find "$out" -maxdepth 1 -type f | wc -l) files"
done

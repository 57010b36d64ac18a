#!/usr/bin/env bash
# Install the Penn Treebank (Mikolov's pre-processed "simple-examples" release, as in
# awd-lstm-lm's getdata.sh) into data/penn/ as train.txt, valid.txt and test.txt.
#
#   bash getdata.sh                 download simple-examples.tgz
#   bash getdata.sh SOURCE          install offline from SOURCE: a folder holding
#                                   train/valid/test.txt or ptb.{train,valid,test}.txt,
#                                   or simple-examples.tgz itself
#
# The files are checked against the published MD5 sums; nothing is changed when
# data/penn/ already holds them.
set -euo pipefail

URL=http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz
SPLITS="train valid test"
declare -A MD5=(
  [train]=f26c4b92c5fdc7b3f8c7cdcb991d8420
  [valid]=aa0affc06ff7c36e977d7cd49e3839bf
  [test]=8b80168b89c18661a38ef683c0dc3721
)

die() { echo "getdata.sh: $*" >&2; exit 1; }

md5_of() {
  if command -v md5sum >/dev/null; then md5sum "$1" | cut -d' ' -f1
  else md5 -q "$1"; fi
}

# verify DIR: true when DIR holds all three splits with the published sums
verify() {
  local split
  for split in $SPLITS; do
    [ -f "$1/$split.txt" ] && [ "$(md5_of "$1/$split.txt")" = "${MD5[$split]}" ] || return 1
  done
}

source_arg=""
if [ $# -gt 1 ]; then die "usage: bash getdata.sh [SOURCE folder or simple-examples.tgz]"; fi
if [ $# -eq 1 ]; then
  [ -e "$1" ] || die "source not found: $1"
  source_arg=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
fi

cd "$(dirname "$0")"
dest=data/penn
if verify "$dest"; then
  echo "data/penn already holds the Penn Treebank (MD5 sums match); nothing to do."
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$source_arg" ]; then
  echo "Downloading $URL"
  if command -v curl >/dev/null; then fetch=(curl -fsSL -o "$work/simple-examples.tgz" "$URL")
  elif command -v wget >/dev/null; then fetch=(wget -q -O "$work/simple-examples.tgz" "$URL")
  else die "neither curl nor wget is installed; download $URL yourself and run: bash getdata.sh simple-examples.tgz"; fi
  "${fetch[@]}" || die "could not download $URL (no network?). Install from a copy instead: bash getdata.sh FOLDER (holding train.txt, valid.txt, test.txt or ptb.train.txt, ptb.valid.txt, ptb.test.txt) or bash getdata.sh path/to/simple-examples.tgz"
  source_arg=$work/simple-examples.tgz
fi

mkdir -p "$work/penn"
if [ -f "$source_arg" ]; then
  tar -xzf "$source_arg" -C "$work" 2>/dev/null || die "$source_arg is not a readable .tgz archive"
  for split in $SPLITS; do
    found=$(find "$work" -name "ptb.$split.txt" -path '*data*' | head -n 1)
    [ -n "$found" ] || die "$source_arg holds no ptb.$split.txt"
    cp "$found" "$work/penn/$split.txt"
  done
elif [ -d "$source_arg" ]; then
  for split in $SPLITS; do
    if [ -f "$source_arg/$split.txt" ]; then cp "$source_arg/$split.txt" "$work/penn/$split.txt"
    elif [ -f "$source_arg/ptb.$split.txt" ]; then cp "$source_arg/ptb.$split.txt" "$work/penn/$split.txt"
    else die "$source_arg holds neither $split.txt nor ptb.$split.txt"; fi
  done
else
  die "source is neither a folder nor a file: $source_arg"
fi

for split in $SPLITS; do
  sum=$(md5_of "$work/penn/$split.txt")
  [ "$sum" = "${MD5[$split]}" ] || die "$split.txt has MD5 $sum, expected ${MD5[$split]}: not the published PTB file; data/penn left as it was"
done

mkdir -p "$dest"
for split in $SPLITS; do
  cp "$work/penn/$split.txt" "$dest/$split.txt.part"
  mv "$dest/$split.txt.part" "$dest/$split.txt"
done
echo "Installed the Penn Treebank into data/penn/ (MD5 sums verified)."

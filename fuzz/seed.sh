#!/usr/bin/env bash
# Builds the seed corpus of every fuzz target from the repository's .ker sources:
#   kernels/*.ker, tests/data/**/*.ker (the fuzz fixtures tests/data/fuzz/ included), the standard library
#   (frontend/src/lower/std.ker), and every ```ker block of docs/*.md (language.md, errors.md, ...).
# Writes fuzz/corpus/<target>/<name> (the same seeds for every target; libFuzzer keeps the ones that add
# coverage). Existing corpus files are kept: run it again after adding fixtures. Usage: fuzz/seed.sh [target...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(lex_parse compile pipeline jit)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Files, named after their path (a/b/c.ker -> a_b_c.ker).
while IFS= read -r -d '' f; do
    rel="${f#"$root"/}"
    cp "$f" "$tmp/${rel//\//_}"
done < <(find "$root/kernels" "$root/tests/data" "$root/frontend/src/lower" -name '*.ker' -print0)

# The ```ker blocks of the docs, one file per block.
for md in "$root"/docs/*.md "$root/README.md"; do
    [ -f "$md" ] || continue
    base="$(basename "$md" .md)"
    awk -v out="$tmp/doc_${base}_" '
        /^```ker[[:space:]]*$/ { n++; inblock = 1; file = sprintf("%s%03d.ker", out, n); printf "" > file; next }
        /^```/ && inblock { inblock = 0; close(file); next }
        inblock { print >> file }
    ' "$md"
done

for t in "${targets[@]}"; do
    mkdir -p "$root/fuzz/corpus/$t"
    cp -n "$tmp"/* "$root/fuzz/corpus/$t/" 2>/dev/null || true
    echo "fuzz/corpus/$t: $(find "$root/fuzz/corpus/$t" -type f | wc -l) files"
done

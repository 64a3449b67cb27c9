#!/usr/bin/env bash
# The C ABI from a C host's side, end to end; CI runs it, and it exits non-zero on any failure:
#   1. include/patchcore.h matches what cbindgen generates from src/ffi/ (drift check);
#   2. the header compiles as C99 and as C++11 without warnings, and so do the C and C++
#      examples of docs/C_ABI.md;
#   3. the CLI (`cargo build --release --bin patchcore`) and the C library as a host builds it,
#      without the CLI (`cargo build --release --lib --no-default-features`): neither its
#      dependency tree nor libpatchcore.a holds clap, indicatif or zip; then examples/c/score.c
#      and bench.c built with gcc against libpatchcore.so, libpatchcore.a and through
#      pkg-config (examples/c/Makefile);
#   4. a generated category (`patchcore synth`), a model fitted on it (`patchcore fit`, the
#      bundled backbone at 64 px), then every test image scored by `patchcore predict` and by
#      the C program, dynamic and static: paths, labels and scores must agree;
#   5. the C program's failures: a missing model, an unreadable image, a folder without images;
#   6. under valgrind, when installed: no invalid memory access and no definite leak.
#
# Tools: cargo, gcc, g++, make, awk; pkg-config and valgrind are used when present. cbindgen
# 0.29.0 is installed into <target>/c-tools on first use (`cargo install --locked`, about 1-2
# minutes on 4 cores, 5 on 2 busy ones; cached afterwards); CBINDGEN=/path/to/cbindgen skips
# that if it is the same version.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

step() { printf '\n== %s ==\n' "$*"; }
fail() { printf 'c-check: FAILED: %s\n' "$*" >&2; exit 1; }

CBINDGEN_VERSION=0.29.0
TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET" ] || fail "cannot find cargo's target directory"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/patchcore-c-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step "header drift (cbindgen $CBINDGEN_VERSION)"
CBINDGEN=${CBINDGEN:-$TARGET/c-tools/bin/cbindgen}
if ! "$CBINDGEN" --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
    echo "installing cbindgen $CBINDGEN_VERSION into $TARGET/c-tools"
    cargo install cbindgen --version "=$CBINDGEN_VERSION" --locked --root "$TARGET/c-tools"
    CBINDGEN=$TARGET/c-tools/bin/cbindgen
fi
"$CBINDGEN" --config cbindgen.toml --output "$WORK/patchcore.h" src/ffi/mod.rs 2>"$WORK/cbindgen.log" ||
    { cat "$WORK/cbindgen.log"; fail "cbindgen could not parse src/ffi/"; }
if ! diff -u include/patchcore.h "$WORK/patchcore.h"; then
    fail "include/patchcore.h is out of date: run
    $CBINDGEN --config cbindgen.toml --output include/patchcore.h src/ffi/mod.rs"
fi
echo "include/patchcore.h is up to date"

step "header compiles as C99 and C++11, and so do docs/C_ABI.md's examples"
printf '#include "patchcore.h"\nint main(void) { return PATCHCORE_OK; }\n' >"$WORK/header.c"
gcc -std=c99 -pedantic -Wall -Wextra -Werror -Iinclude -c "$WORK/header.c" -o "$WORK/header-c.o"
g++ -std=c++11 -pedantic -Wall -Wextra -Werror -Iinclude -x c++ -c "$WORK/header.c" -o "$WORK/header-cpp.o"
# The guide's ```c and ```cpp blocks, compiled as they are printed.
awk -v dir="$WORK" '/^```(c|cpp)$/ { lang = substr($0, 4); n++; out = dir "/doc" n "." lang; next }
    /^```/ { out = ""; next }
    out != "" { print > out }' docs/C_ABI.md
for f in "$WORK"/doc*.c; do gcc -std=c11 -Wall -Wextra -Werror -Iinclude -c "$f" -o "$f.o"; done
for f in "$WORK"/doc*.cpp; do g++ -std=c++11 -Wall -Wextra -Werror -Iinclude -c "$f" -o "$f.o"; done
ls "$WORK"/doc*.c "$WORK"/doc*.cpp >/dev/null || fail "docs/C_ABI.md has no C or C++ example left to check"
echo "ok"

step "the CLI, then the C library without it (cargo build --release --lib --no-default-features)"
cargo build --release --bin patchcore
# Built second: the lean library's .so and .a replace the ones the CLI's build left.
cargo build --release --lib --no-default-features
if cargo tree --edges normal --no-default-features --prefix none | grep -E "^(clap|indicatif|zip) "; then
    fail "the library without default features still depends on the crates above"
fi
if nm --defined-only "$TARGET/release/libpatchcore.a" 2>/dev/null | grep -qE "clap_builder|indicatif|zip[0-9]*read"; then
    fail "libpatchcore.a holds CLI code (clap, indicatif or zip symbols)"
fi
echo "libpatchcore without the CLI: no clap, indicatif or zip; $(du -h "$TARGET/release/libpatchcore.so" | cut -f1) .so"
LIBDIR=$TARGET/release
BIN=$LIBDIR/patchcore
for f in libpatchcore.so libpatchcore.a patchcore; do
    [ -e "$LIBDIR/$f" ] || fail "cargo did not produce $LIBDIR/$f"
done

step "examples/c: dynamic, static, pkg-config"
make -s -C examples/c OUT="$WORK/bin" LIBDIR="$LIBDIR" all static pc
if command -v pkg-config >/dev/null; then
    # shellcheck disable=SC2046 # pkg-config's output is a list of flags.
    gcc -std=c11 -Wall -Wextra -Werror -O2 examples/c/score.c -o "$WORK/bin/score-pc" \
        $(PKG_CONFIG_PATH="$WORK/bin" pkg-config --cflags --libs patchcore) -Wl,-rpath,"$LIBDIR"
    echo "pkg-config: $(PKG_CONFIG_PATH="$WORK/bin" pkg-config --cflags --libs patchcore)"
else
    echo "pkg-config not installed: the .pc file was written but not tried"
fi
if ldd "$WORK/bin/score-static" | grep -q libpatchcore; then
    fail "score-static links libpatchcore dynamically"
fi
ldd "$WORK/bin/score" | grep -q "libpatchcore.so" || fail "score does not link libpatchcore.so"

step "a generated category and a model fitted by the CLI"
"$BIN" synth --out "$WORK/data" --category woven --size 64 --seed 3
DATA=$WORK/data/woven
MODEL=$WORK/model.patchcore
"$BIN" fit --train "$DATA/train/good" --val "$DATA/test" --out "$MODEL" --size 64
TEST_DIRS=("$DATA"/test/*)

step "score (C) against patchcore predict (CLI)"
"$BIN" predict --model "$MODEL" --batch 1 "${TEST_DIRS[@]}" >"$WORK/cli.jsonl"
"$WORK/bin/score" "$MODEL" "${TEST_DIRS[@]}" >"$WORK/c.jsonl"
"$WORK/bin/score-static" "$MODEL" "${TEST_DIRS[@]}" >"$WORK/c-static.jsonl"
[ -x "$WORK/bin/score-pc" ] && "$WORK/bin/score-pc" "$MODEL" "${TEST_DIRS[@]}" >"$WORK/c-pc.jsonl"
# Each C line must match the CLI's line of the same index: same path and label, scores equal
# to 1e-6 relative (the two print the same float with different digit counts).
compare() {
    awk '
        function field(line, key,   m) {
            if (match(line, "\"" key "\": *\"[^\"]*\"")) {
                m = substr(line, RSTART, RLENGTH); sub("^\"" key "\": *\"", "", m); sub("\"$", "", m); return m
            }
            if (match(line, "\"" key "\": *[-+0-9.eE]+")) {
                m = substr(line, RSTART, RLENGTH); sub("^\"" key "\": *", "", m); return m
            }
            return "MISSING"
        }
        function differ(a, b) { d = a - b; if (d < 0) d = -d; s = b < 0 ? -b : b; return d > 1e-6 * (s > 1 ? s : 1) }
        NR == FNR { want[FNR] = $0; n = FNR; next }
        {
            got = $0; w = want[FNR]
            if (field(got, "path") != field(w, "path") || field(got, "label") != field(w, "label") ||
                differ(field(got, "score"), field(w, "score")) ||
                differ(field(got, "normalized"), field(w, "normalized"))) {
                printf "line %d differs:\n  CLI: %s\n  C:   %s\n", FNR, w, got; bad = 1
            }
            seen = FNR
        }
        END {
            if (seen != n) { printf "%d lines from the CLI, %d from C\n", n, seen; bad = 1 }
            exit bad
        }' "$1" "$2"
}
for out in c c-static c-pc; do
    [ -f "$WORK/$out.jsonl" ] || continue
    compare "$WORK/cli.jsonl" "$WORK/$out.jsonl" || fail "$out.jsonl disagrees with patchcore predict"
done
lines=$(wc -l <"$WORK/c.jsonl")
anomalous=$(grep -c '"label": "anomalous"' "$WORK/c.jsonl" || true)
[ "$lines" -ge 10 ] || fail "only $lines images were scored"
echo "$lines images: every path, label and score agrees ($anomalous anomalous); static and pkg-config builds too"
head -n 2 "$WORK/c.jsonl"

step "score's failures"
if "$WORK/bin/score" "$WORK/missing.patchcore" "$DATA/test/good" >/dev/null 2>"$WORK/err.txt"; then
    fail "a missing model exited 0"
fi
grep -q "missing.patchcore" "$WORK/err.txt" || fail "the error does not name the file: $(cat "$WORK/err.txt")"
echo "not a PNG" >"$WORK/broken.png"
if "$WORK/bin/score" "$MODEL" "$WORK/broken.png" "$DATA/test/good/000.png" >"$WORK/mixed.jsonl"; then
    fail "an unreadable image exited 0"
fi
grep -q '"error"' "$WORK/mixed.jsonl" && grep -q '"score"' "$WORK/mixed.jsonl" ||
    fail "expected one error line and one scored line: $(cat "$WORK/mixed.jsonl")"
if "$WORK/bin/score" "$MODEL" "$DATA/test" >"$WORK/empty.jsonl"; then
    fail "a folder without images (its images in subfolders) exited 0"
fi
grep -q "no PNG or JPEG images in this folder" "$WORK/empty.jsonl" && grep -q "$DATA/test" "$WORK/empty.jsonl" ||
    fail "the error does not name the folder: $(cat "$WORK/empty.jsonl")"
echo "a missing model, an unreadable image and a folder without images are reported, exit status 1"

step "valgrind"
if command -v valgrind >/dev/null; then
    # Uninitialised-value tracking is off: LLVM's branchless code on an Option's payload
    # (Preprocess::apply, safe code, the CLI shows it too) trips it, a known false-positive
    # class. Out-of-bounds reads of the caller's buffer, bad frees and leaks are still caught.
    valgrind -q --error-exitcode=9 --undef-value-errors=no --leak-check=full --errors-for-leak-kinds=definite \
        "$WORK/bin/score-static" "$MODEL" "$DATA/test/good/000.png" "$WORK/broken.png" >/dev/null 2>"$WORK/valgrind.txt" ||
        [ $? -eq 1 ] || { cat "$WORK/valgrind.txt"; fail "valgrind found errors"; }
    echo "no invalid access, no definite leak"
else
    echo "valgrind not installed: skipped"
fi

echo
echo "c-check passed"

#!/usr/bin/env bash
# The evaluation report as a browser shows it; exits non-zero on any failure:
#   1. Debian's chromium, installed with apt-get when missing (its version is printed);
#   2. a small generated category (`patchcore synth`, 64 px), a model fitted on it and its
#      report (`patchcore eval --out`);
#   3. a canary page that logs a console error and throws, opened first, so that a clean
#      report below means the console check works, not that it saw nothing;
#   4. the report opened headless: no console message at all (the report has no script, so
#      any is an error), its three plots per category in the rendered DOM, every example
#      image present on disk;
#   5. a screenshot, report.png, kept in $REPORT_CHECK_OUT (default: target/report-check) to
#      look at: axes, colours, threshold line.
# The seconds of each stage and the total, installation included, are printed at the end.
#
# PATCHCORE=/path/to/patchcore uses that binary; otherwise `cargo build --release --bin
# patchcore` builds one. Needs root (or sudo) for apt-get only when chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }
fail() { printf 'report-check: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

START=$(now)
OUT=${REPORT_CHECK_OUT:-target/report-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/patchcore-report-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step "chromium"
T=$(now)
if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version
INSTALL_S=$(since "$T")

# The flags that keep a headless run quiet and local: no sandbox (root in a container), no GPU,
# no network-backed services, a throwaway profile.
browse() {
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run --user-data-dir="$(mktemp -d "$WORK/profile.XXXX")" \
        --enable-logging=stderr --v=0 "$@"
}
# Chromium logs each console message to stderr as `...:CONSOLE(line)] "text", source: ...`
# (and an uncaught exception as a console message "Uncaught ...").
console_lines() { grep -E 'CONSOLE|Uncaught' "$1" || true; }

step "canary: a console error must be seen"
cat >"$WORK/canary.html" <<'EOF'
<!doctype html><html><body><p>canary</p><script>console.error("canary error"); null.boom();</script></body></html>
EOF
browse --dump-dom "file://$WORK/canary.html" >"$WORK/canary.dom" 2>"$WORK/canary.log" || true
console_lines "$WORK/canary.log" | grep -q 'canary error' ||
    fail "chromium's stderr did not show the canary's console.error: the console check would see nothing (log: $(tail -3 "$WORK/canary.log"))"
console_lines "$WORK/canary.log" | grep -q 'Uncaught' || fail "chromium's stderr did not show the canary's uncaught exception"
echo "console errors are visible on stderr"

step "report of a generated category"
T=$(now)
if [ -z "${PATCHCORE:-}" ]; then
    cargo build --release --bin patchcore
    PATCHCORE=target/release/patchcore
fi
"$PATCHCORE" synth --out "$WORK/data" --category grain --size 64 --seed 3 >/dev/null
DATA=$WORK/data/grain
"$PATCHCORE" fit --train "$DATA/train/good" --val "$DATA/test" --out "$WORK/model.safetensors" --size 64 >/dev/null
"$PATCHCORE" eval --model "$WORK/model.safetensors" --data "$DATA" --out "$WORK/eval"
REPORT=$WORK/eval/report.html
RENDER_S=$(since "$T")

step "the report in chromium"
T=$(now)
browse --dump-dom "file://$REPORT" >"$WORK/report.dom" 2>"$WORK/report.log" || fail "chromium exited with an error: $(tail -3 "$WORK/report.log")"
if [ -n "$(console_lines "$WORK/report.log")" ]; then
    console_lines "$WORK/report.log" >&2
    fail "console messages while showing the report"
fi
SVGS=$(grep -o '<svg' "$WORK/report.dom" | wc -l)
[ "$SVGS" -eq 3 ] || fail "the rendered DOM has $SVGS <svg> elements, expected 3 (histogram, ROC, PRO)"
for hook in 'class="frame"' 'class="curve"' 'class="threshold"' 'class="good"' 'class="defective"'; do
    grep -q "$hook" "$WORK/report.dom" || fail "the rendered DOM lacks $hook"
done
grep -o '<img src="[^"]*"' "$REPORT" | sed 's/<img src="//; s/"$//' | while read -r image; do
    [ -f "$WORK/eval/$image" ] || fail "example image $image is missing"
done
browse --screenshot="$OUT/report.png" --window-size=1200,1400 --hide-scrollbars "file://$REPORT" \
    >/dev/null 2>"$WORK/screenshot.log" || fail "screenshot failed: $(tail -3 "$WORK/screenshot.log")"
rm -rf "$OUT/eval" && cp -r "$WORK/eval" "$OUT/eval"
echo "3 plots rendered, no console message; screenshot: $OUT/report.png"
BROWSE_S=$(since "$T")

step "report-check passed"
printf 'chromium install/check %s s, report %s s, browser checks %s s, total %s s\n' \
    "$INSTALL_S" "$RENDER_S" "$BROWSE_S" "$(since "$START")"

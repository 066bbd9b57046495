#!/usr/bin/env bash
# The fork's diff against its base release, made from the tree; never edit the .diff or .patch files by hand.
#
#   fork.sh write    regenerate smoltcp.diff (the whole fork) and the series' last, generated patch
#   fork.sh check    fail if either differs from what the tree gives, or a fix no longer applies to the release alone
#   fork.sh test     run the release's tests with each fix of the series applied alone (as it would be offered)
#
# The base release is named in BASE and fetched by cargo. The series (series/*.patch, in order) applied to it gives
# the tree exactly: the fixes come first, each made against the release alone, so that each can be offered on its
# own (each applies to the release alone, and in order after the ones before it exactly); the last patch, generated,
# is everything else. A fix that builds on others names each in a line `Depends-on: FILE` at its top: "alone" is
# then with those (and what they depend on) applied first, each once.
set -euo pipefail

fork=$(cd "$(dirname "$0")" && pwd)
crate=$(dirname "$fork")
base=$(cat "$fork/BASE")
generated="$fork/series/9999-the-rest.patch"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Files of the released crate that the fork does not carry: cargo's own markers, upstream's CI, and a lock file
# that a workspace member does not use.
not_carried=(.cargo-ok .github Cargo.lock .gitignore)

released() {
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nsmoltcp = "=%s"\n' \
        "$base" >"$work/fetch/Cargo.toml"
    : >"$work/fetch/src/lib.rs"
    cargo fetch -q --manifest-path "$work/fetch/Cargo.toml"
    cargo metadata -q --format-version 1 --manifest-path "$work/fetch/Cargo.toml" |
        python3 -c 'import json, sys, os
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "smoltcp"))'
}

# A copy of the released crate at $1, without what the fork does not carry.
copy_release() {
    cp -a "$release" "$1"
    for f in "${not_carried[@]}"; do rm -rf "${1:?}/$f"; done
}

# The tree's files as git sees them (tracked or new, not ignored), less the fork's own: this folder, and the
# rustfmt.toml that keeps the root's settings off the fork's code.
copy_tree() {
    mkdir -p "$1"
    (cd "$crate" && git ls-files --cached --others --exclude-standard -z -- . ':!fork' ':!rustfmt.toml' |
        xargs -0 cp --parents -t "$1")
}

# A diff of two folders, with a/ and b/ as its prefixes (patch -p1), stable from run to run.
diff_dirs() {
    (cd "$work" && git diff --no-index --no-color --no-ext-diff --binary --no-renames --src-prefix=a/ \
        --dst-prefix=b/ "$1" "$2" | sed -e "/^\(diff --git\|---\|+++\) /s#\([ab]\)/\($1\|$2\)/#\1/#g") || true
}

fixes() { find "$fork/series" -name '*.patch' ! -name "$(basename "$generated")" | sort; }

# The fixes a fix builds on, in the order to apply them, itself last; a fix that two of them build on comes once.
with_dependencies() { dependencies_of "$1" | awk '!seen[$0]++'; }
dependencies_of() {
    local dep
    for dep in $(sed -n 's/^Depends-on: //p' "$1"); do dependencies_of "$fork/series/$dep"; done
    echo "$1"
}

# Applies a fix with what it builds on to the copy of the release at $2; `--dry-run` as $3 checks only the fix.
apply_alone() {
    local p
    for p in $(with_dependencies "$1"); do
        if [ "$p" = "$1" ]; then
            (cd "$2" && patch -s -p1 --no-backup-if-mismatch ${3:-} <"$p" >/dev/null) || return 1
        else
            (cd "$2" && patch -s -p1 --no-backup-if-mismatch <"$p" >/dev/null) || return 1
        fi
    done
}

release=$(released)
copy_release "$work/release"
copy_tree "$work/tree"
# The fixes in order on the release, then the rest: the generated patch is what lies between.
copy_release "$work/fixed"
for p in $(fixes); do
    (cd "$work/fixed" && patch -s -p1 --fuzz=0 --no-backup-if-mismatch <"$p") ||
        { echo "$(basename "$p") does not apply after the fixes before it" >&2; exit 1; }
done
diff_dirs release tree >"$work/smoltcp.diff"
diff_dirs fixed tree >"$work/rest.patch"

case "${1:-}" in
write)
    cp "$work/smoltcp.diff" "$fork/smoltcp.diff"
    cp "$work/rest.patch" "$generated"
    echo "wrote $fork/smoltcp.diff and $generated"
    ;;
check)
    status=0
    for p in $(fixes); do
        copy_release "$work/alone"
        apply_alone "$p" "$work/alone" --dry-run ||
            { echo "$(basename "$p") does not apply to smoltcp $base alone" >&2; status=1; }
        rm -rf "$work/alone"
    done
    cmp -s "$work/smoltcp.diff" "$fork/smoltcp.diff" ||
        { echo "smoltcp.diff is not the tree's diff against $base: run crates/smoltcp/fork/fork.sh write" >&2; status=1; }
    cmp -s "$work/rest.patch" "$generated" ||
        { echo "$(basename "$generated") is not what the tree gives: run crates/smoltcp/fork/fork.sh write" >&2; status=1; }
    [ $status = 0 ] && echo "the fork's diff and series agree with the tree ($(fixes | wc -l) fixes and the rest)"
    exit $status
    ;;
test)
    # One target folder for all of them: only the crate itself builds again.
    export CARGO_TARGET_DIR="$work/target"
    for p in $(fixes); do
        echo "== smoltcp $base with $(with_dependencies "$p" | xargs -n1 basename | paste -sd' ') alone"
        rm -rf "$work/alone"
        copy_release "$work/alone"
        cp "$release/Cargo.lock" "$work/alone/"
        apply_alone "$p" "$work/alone"
        (cd "$work/alone" && cargo test -q --locked --lib 2>&1 | grep -E '^test result|FAILED|panicked|^error')
    done
    ;;
*)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Builds the package (library, control file, install script) of a released
# version, for the upgrade test: `scripts/released.sh 0.1.0` leaves it in
# target/released/0.1.0/package/ and prints that directory. A package already
# built is reused. Its target directory starts as a copy of this checkout's,
# where every dependency of the release is usually compiled already (its
# Cargo.lock pins versions the current one still has), so that little more
# than pg_jobs itself builds. A copy, not the same directory: both versions'
# library is target/release/deps/libpg_jobs.so (a cdylib's name has no hash),
# and cargo would then take the one built last for the other version's.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:?usage: scripts/released.sh VERSION}
PG_MAJOR=${PG_MAJOR:-15}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}
root=$PWD
dir=$root/target/released/$version
package=$dir/package

# A release's commit never changes, so a package built once stays right.
if [ -f "$dir/built" ]; then
    echo "$package"
    exit 0
fi

commit=$(awk -v v="$version" '$1 == v { print $2 }' sql/released/RELEASES)
if [ -z "$commit" ]; then
    echo "released: $version is not listed in sql/released/RELEASES" >&2
    exit 1
fi
# CI checkouts may be shallow.
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "released: commit $commit of $version is not in this clone; fetching it" >&2
    git fetch --quiet --depth=1 origin "$commit" >&2 || {
        echo "released: cannot fetch commit $commit of release $version (git fetch --unshallow)" >&2
        exit 1
    }
fi

rm -rf "$dir"
mkdir -p "$dir/src"
git archive "$commit" | tar -x -C "$dir/src"
mkdir -p "$dir/target"
if [ -d target/release ]; then
    cp -a --reflink=auto target/release "$dir/target/"
    rm -rf "$dir"/target/release/{libpg_jobs.*,deps/libpg_jobs.*,deps/pg_jobs-*,.fingerprint/pg_jobs-*,build/pg_jobs-*,incremental,pg_jobs-pg*}
fi
echo "released: building $version ($commit)" >&2
CARGO_TARGET_DIR=$dir/target cargo pgrx package \
    --manifest-path "$dir/src/Cargo.toml" --pg-config "$PG_CONFIG" --out-dir "$package" >&2
test -f "$package$("$PG_CONFIG" --pkglibdir)/pg_jobs.so"
# The install script kept in the repository must be the one the release built.
cmp "$package$("$PG_CONFIG" --sharedir)/extension/pg_jobs--$version.sql" "sql/released/pg_jobs--$version.sql" >&2
rm -rf "$dir/target"
echo "$commit" >"$dir/built"
echo "$package"

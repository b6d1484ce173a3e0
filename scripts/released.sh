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
tag=v$version
root=$PWD
dir=$root/target/released/$version
package=$dir/package

# A tag never moves, so a package built once stays right.
if [ -f "$dir/built" ]; then
    echo "$package"
    exit 0
fi

# CI checkouts may be shallow and without tags.
if ! git rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
    echo "released: tag $tag is not in this clone; fetching it" >&2
    git fetch --quiet --depth=1 origin "refs/tags/$tag:refs/tags/$tag" >&2 || {
        echo "released: cannot find tag $tag of release $version (fetch the tags: git fetch --tags)" >&2
        exit 1
    }
fi
commit=$(git rev-parse "refs/tags/$tag^{commit}")

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

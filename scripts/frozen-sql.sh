#!/usr/bin/env bash
# Refuses a change to SQL that installations already ran (called by .ci/run):
# - sql/released/pg_jobs--X.sql, the install script of release X (listed
#   with its commit in sql/released/RELEASES), must exist and stay as it was
#   committed;
# - an upgrade script sql/pg_jobs--A--B.sql is frozen once a release has it
#   (it must stay as at every release commit that has it), or once a newer
#   upgrade script, from B on, exists (it must stay as when the first of those was
#   committed, or as in HEAD while that one is not committed yet).
# The working tree is what is checked. The check needs the history: a
# shallow clone is deepened first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    git fetch --quiet --unshallow origin || {
        echo "frozen-sql: this clone is shallow and its history cannot be fetched (git fetch --unshallow)" >&2
        exit 1
    }
fi

failed=0
refuse() {
    echo "frozen-sql: $*" >&2
    failed=1
}
# Whether the working tree's $1 is the same as at commit $2.
same_as() {
    [ -f "$1" ] && git cat-file -e "$2:$1" 2>/dev/null && git show "$2:$1" | cmp -s - "$1"
}
# The first commit that added a file matching the pathspec $1 (empty if none).
first_added() {
    git log --diff-filter=A --format=%H -- "$1" | tail -n 1
}

while read -r version commit; do
    case $version in '' | '#'*) continue ;; esac
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        refuse "release $version's commit $commit (sql/released/RELEASES) is not in this history"
        continue
    fi
    released=sql/released/pg_jobs--$version.sql
    if [ ! -f "$released" ]; then
        refuse "$released is missing: $version is released (${commit:0:12}), and its install script is kept there"
    else
        added=$(first_added "$released")
        if [ -n "$added" ] && ! same_as "$released" "$added"; then
            refuse "$released was changed since it was committed (${added:0:12}); released SQL is never edited"
        fi
    fi
    for script in $(git ls-tree --name-only "$commit" sql/ | grep -E '^sql/pg_jobs--[^-]+--[^-]+\.sql$' || true); do
        if ! same_as "$script" "$commit"; then
            refuse "$script was changed or removed since release $version (${commit:0:12}); write a new upgrade script instead"
        fi
    done
done <sql/released/RELEASES

for script in sql/pg_jobs--*--*.sql; do
    [ -f "$script" ] || continue
    to=${script#sql/pg_jobs--*--}
    to=${to%.sql}
    newer=$(ls sql/pg_jobs--"$to"--*.sql 2>/dev/null | head -n 1 || true)
    [ -n "$newer" ] || continue
    since=$(first_added "sql/pg_jobs--$to--*.sql")
    if [ -z "$since" ]; then
        since=HEAD
    fi
    if git cat-file -e "$since:$script" 2>/dev/null && ! same_as "$script" "$since"; then
        refuse "$script was changed after $newer (a later upgrade) was written; change the later script instead"
    fi
done

exit $failed

#!/usr/bin/env bash
# A/B of the CUTLASS library of several git revisions in one visit to the GPU machine: each revision gets a
# worktree under .ab/ (git-ignored) and its own library in .cache/es_dual (the library's key is its sources'
# hash, so the builds sit side by side); on the GPU machine each worktree runs the same command with its
# own sources, one after the other, on one card.
#   here:   bash benchmarks/tree_ab.sh prepare main my-branch my-branch~1   (worktrees + their libraries)
#   device: bash benchmarks/tree_ab.sh run "python3 benchmarks/mode_ab.py --modes es,native_mc --extra"
#           (carry .cache/es_dual and .ab; the command runs in each worktree, in the order prepared)
# Worktrees are named by the revision's short hash; .ab/order lists them with the names given.
set -e -o pipefail
root=$PWD
case "$1" in
  prepare)
    shift
    rm -rf .ab; git worktree prune; mkdir -p .ab
    for rev in "$@"; do
      hash=$(git rev-parse --short "$rev")
      git worktree add -q --detach ".ab/$hash" "$rev"
      (cd ".ab/$hash" && PYTHONPATH=$PWD ES_DUAL_CACHE_DIR=$root/.cache/es_dual python3 -m es_dual.cutlass.build)
      echo "$hash $rev" >> .ab/order
    done
    cat .ab/order ;;
  run)
    cmd=$2
    while read -r hash rev; do
      echo "=== $rev ($hash)"
      (cd ".ab/$hash" && PYTHONPATH=$PWD ES_DUAL_CACHE_DIR=$root/.cache/es_dual bash -c "$cmd")
    done < .ab/order ;;
  *)
    echo "usage: $0 prepare REV... | run COMMAND" >&2; exit 2 ;;
esac

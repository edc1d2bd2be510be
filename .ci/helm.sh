# helm (the chart's static checks: lint and template in tests/test_chart.py): sourced by .ci/run.
#
# `go install helm.sh/helm/v4/cmd/helm@VERSION` into
# $FILEPROC_CI_CACHE/helm-VERSION/bin once (about two minutes); the tests run
# it from there. Exports FILEPROC_HELM and defines nothing else: the work runs
# in a subshell. Built into BIN.partial and renamed when complete, so an
# interrupted build never looks cached.
export FILEPROC_HELM="${FILEPROC_CI_CACHE:-/var/cache/fileproc-ci}/helm-v4.3.2/bin/helm"
printf '\n==== %s ====\n' "helm (${FILEPROC_HELM%/bin/helm})"
if [[ -x "$FILEPROC_HELM" ]]; then
    echo "cached: $FILEPROC_HELM"
else
    (
        set -euo pipefail
        bin=${FILEPROC_HELM%/helm}
        version=${bin%/bin}
        version=${version##*/helm-}
        command -v go > /dev/null || { echo "ci: go not found (expected /usr/local/go/bin/go); it builds helm" >&2; exit 1; }
        rm -rf "$bin.partial"
        GOBIN="$bin.partial" go install "helm.sh/helm/v4/cmd/helm@$version"
        rm -rf "$bin"
        mv "$bin.partial" "$bin"
    )
fi

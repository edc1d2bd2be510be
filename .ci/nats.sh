# nats-server with JetStream (the NATS stream tests run against it): sourced by .ci/run.
#
# `go install github.com/nats-io/nats-server/v2@VERSION` into
# $FILEPROC_CI_CACHE/nats-server-VERSION/bin once (under a minute);
# tests/nats_server.py runs it from there. Exports FILEPROC_NATS_SERVER and
# defines nothing else: the work runs in a subshell. Built into BIN.partial
# and renamed when complete, so an interrupted build never looks cached.
export FILEPROC_NATS_SERVER="${FILEPROC_CI_CACHE:-/var/cache/fileproc-ci}/nats-server-v2.15.3/bin/nats-server"
printf '\n==== %s ====\n' "nats-server (${FILEPROC_NATS_SERVER%/bin/nats-server})"
if [[ -x "$FILEPROC_NATS_SERVER" ]]; then
    echo "cached: $FILEPROC_NATS_SERVER"
else
    (
        set -euo pipefail
        bin=${FILEPROC_NATS_SERVER%/nats-server}
        version=${bin%/bin}
        version=${version##*/nats-server-}
        command -v go > /dev/null || { echo "ci: go not found (expected /usr/local/go/bin/go); it builds nats-server" >&2; exit 1; }
        rm -rf "$bin.partial"
        GOBIN="$bin.partial" go install "github.com/nats-io/nats-server/v2@$version"
        rm -rf "$bin"
        mv "$bin.partial" "$bin"
    )
fi

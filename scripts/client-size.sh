#!/usr/bin/env bash
# Size of the pgws JavaScript client (clients/js/src/index.js) beside centrifuge-js (`centrifuge`
# on npm) and Supabase's `@supabase/realtime-js`, the way a browser application ships them: each
# bundled with esbuild (--bundle --minify --format=esm --platform=browser, its dependencies
# included), then gzip -9. Prints a table and one JSON line per library on stdout.
#
# Installs esbuild and the two peers with npm in a temporary directory (the npm registry is the
# only network access); nothing is added to the project. Versions: CLIENT_SIZE_ESBUILD,
# CLIENT_SIZE_CENTRIFUGE, CLIENT_SIZE_REALTIME (default: latest); the versions installed are
# printed. CLIENT_SIZE_KEEP=1 keeps the temporary directory.
#
#   scripts/client-size.sh >sizes.jsonl
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pgws-client-size.XXXXXX")
cleanup() { [ -n "${CLIENT_SIZE_KEEP:-}" ] || rm -rf "$TMP"; }
trap cleanup EXIT
cd "$TMP"
npm init -y >/dev/null
npm install --no-audit --no-fund --loglevel=error \
    "esbuild@${CLIENT_SIZE_ESBUILD:-latest}" \
    "centrifuge@${CLIENT_SIZE_CENTRIFUGE:-latest}" \
    "@supabase/realtime-js@${CLIENT_SIZE_REALTIME:-latest}" >&2
version() { node -p "require('./node_modules/$1/package.json').version"; }
cp "$ROOT/clients/js/src/index.js" pgws-client.js
# Entry points: everything each library exports, so nothing is tree-shaken away.
echo "export * from './pgws-client.js';" >entry-pgws.js
echo "export * from 'centrifuge';" >entry-centrifuge.js
echo "export * from '@supabase/realtime-js';" >entry-realtime.js
ESBUILD_VERSION=$(version esbuild)
printf '%-24s %-10s %10s %10s\n' library version minified "min+gzip" >&2
for lib in pgws:pgws-client centrifuge:centrifuge realtime:@supabase/realtime-js; do
    key=${lib%%:*}
    name=${lib#*:}
    if [ "$key" = pgws ]; then
        ver=$(node -p "require('$ROOT/clients/js/package.json').version")
    else
        ver=$(version "$name")
    fi
    ./node_modules/.bin/esbuild "entry-$key.js" --bundle --minify --format=esm \
        --platform=browser --log-level=warning --outfile="out-$key.js"
    min=$(wc -c <"out-$key.js")
    gz=$(gzip -9 -c "out-$key.js" | wc -c)
    printf '%-24s %-10s %10d %10d\n' "$name" "$ver" "$min" "$gz" >&2
    printf '{"label":"client-size","library":"%s","version":"%s","esbuild":"%s","minified_bytes":%d,"gzip_bytes":%d}\n' \
        "$name" "$ver" "$ESBUILD_VERSION" "$min" "$gz"
done

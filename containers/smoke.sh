#!/bin/sh
# Smoke test of an exaslide image, run inside it (the `smoke` build stage of the
# Containerfiles, or `docker run --rm --entrypoint sh IMAGE /path/smoke.sh cpu`): the
# environment report, then synth -> mask -> extract on a small synthetic slide and a few
# requests to the viewer, as the image's (non-root) user, checking that each output exists.
#   sh smoke.sh cpu   also checks that torch is NOT installed (the CPU image is torch-free)
#   sh smoke.sh gpu   also checks that torch and torchvision import (a CUDA build)
set -eu
kind=${1:-cpu}
say() { printf '\n== smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }

say "user $(id -un) (uid $(id -u)), python $(python --version 2>&1), $(command -v exaslide)"
[ "$(id -u)" != 0 ] || fail "running as root; the image's user must not be root"

say "exaslide env"
exaslide --version
exaslide env
exaslide env --json > /tmp/exaslide-env.json || fail "exaslide env --json"

if [ "$kind" = cpu ]; then
    say "torch must not be importable"
    if python -c "import torch" 2>/dev/null; then fail "torch is importable in the CPU image"; fi
    echo "import torch: fails, as it should (ModuleNotFoundError)"
else
    say "torch"
    python -c "import torch, torchvision; print('torch', torch.__version__, 'CUDA build', torch.version.cuda, '| torchvision', torchvision.__version__)"
fi

work=$(mktemp -d /tmp/exaslide-smoke.XXXXXX)
cd "$work"
say "synth (in $work)"
exaslide synth slides --width 4096 --height 3072 --tumours 2 --seed 1
say "mask"
exaslide mask slides/synth_1.tif --annotations slides/synth_1.xml --level 1 --out masks
printf 'slide_id,path,annotation,label,split\nsynth_1,slides/synth_1.tif,slides/synth_1.xml,tumor,train\n' \
    > manifest.csv
say "extract"
exaslide extract manifest.csv --out patches --sampler grid --workers 1 --materialize jpeg

say "outputs"
for f in slides/synth_1.tif slides/synth_1.xml masks/synth_1_mask.png masks/synth_1_mask.tif \
         masks/synth_1_summary.json patches/index/synth_1.parquet patches/status/synth_1.json \
         patches/shards/synth_1-00000.tar; do
    [ -s "$f" ] || fail "missing or empty: $f"
    echo "ok $(wc -c < "$f") bytes  $f"
done
python -c "
import pyarrow.parquet as pq
t = pq.read_table('patches/index')
assert t.num_rows > 0, 'no patches in the index'
print('index:', t.num_rows, 'patches,', 'columns', ', '.join(t.column_names[:8]), '...')
"

say "viewer (exaslide view on 127.0.0.1, a few requests)"
python -c "
import json, subprocess, sys, urllib.request
p = subprocess.Popen(['exaslide', 'view', 'slides', '--host', '127.0.0.1', '--port', '0'],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
try:
    line = p.stdout.readline()
    print(line.strip())
    url = line.split()[2].rstrip('/')
    def get(path):
        with urllib.request.urlopen(url + path, timeout=30) as r:
            return r.status, r.headers.get('content-type', ''), r.read()
    s, t, body = get('/api/slides')
    slides = json.loads(body)
    assert s == 200 and slides and not slides[0]['error'], slides
    print('GET /api/slides', s, [x['name'] for x in slides])
    for path in ('/', '/static/vendor/openseadragon/openseadragon.min.js',
                 '/slides/' + slides[0]['id'] + '.dzi',
                 '/slides/' + slides[0]['id'] + '_files/0/0_0.jpeg'):
        s, t, body = get(path)
        assert s == 200 and body, path
        print('GET', path, s, t, len(body), 'bytes')
finally:
    p.terminate()
    p.wait(10)
"
cd /
rm -rf "$work"
say "passed ($kind)"

#!/usr/bin/env bash
# Load test of `qp-engine serve` on the loopback interface with wrk.
#
# Scenarios (each runs for $DURATION with $CONNECTIONS connections):
#   features  POST /predict to the feature model, random in-range features (no cache hits)
#   image     POST /predict with a 64x48 PNG and random parameters to QualityNet
#             (image decode + resize + the network; concurrent requests are batched)
#   cached    POST /predict with one fixed feature body (answered from the response cache)
# Prints req/s and latency percentiles per scenario, then the server's mean batch sizes.
#
# Models: weights/qualitynet-features.qpw and weights/qualitynet.qpw when present;
# otherwise they are generated into a temporary directory (QualityNet as the --tiny
# 32x32 variant unless QP_LOADTEST_FULL=1) with tools/*.py and qp-convert, which needs a
# Python with numpy and onnx ($PYTHON, default /work/venv/bin/python or python3).
#
# Environment: DURATION (10s), CONNECTIONS (16), WRK_THREADS (2), WRK_TIMEOUT (30s), PORT (18080),
# SCENARIOS ("features image cached"), SERVER_FLAGS (extra flags for the server),
# FEATURES_MODEL, QUALITYNET_MODEL (override the model files).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
WRK_THREADS=${WRK_THREADS:-2}
PORT=${PORT:-18080}
SCENARIOS=${SCENARIOS:-features image cached}
SERVER_FLAGS=${SERVER_FLAGS:-}
WRK_TIMEOUT=${WRK_TIMEOUT:-30s}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /work/venv/bin/python ]]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi
BASE="http://127.0.0.1:$PORT"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 1; }

WORK=$(mktemp -d /tmp/qp-loadtest.XXXXXX)
SERVER_PID=
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building (release)"
(cd "$ROOT" && cargo build --release --quiet --example serve --bin qp-convert)
SERVE="$ROOT/target/release/examples/serve"
CONVERT="$ROOT/target/release/qp-convert"

FEATURES_MODEL=${FEATURES_MODEL:-$ROOT/weights/qualitynet-features.qpw}
QUALITYNET_MODEL=${QUALITYNET_MODEL:-$ROOT/weights/qualitynet.qpw}
QUALITYNET_KIND=full
if [[ ! -f "$FEATURES_MODEL" ]]; then
  echo "== generating the feature model into $WORK"
  "$PYTHON" "$ROOT/tools/feature_model.py" "$WORK/feature_model.onnx" >/dev/null
  "$CONVERT" "$WORK/feature_model.onnx" -o "$WORK/qualitynet-features.qpw" >/dev/null
  FEATURES_MODEL="$WORK/qualitynet-features.qpw"
fi
if [[ ! -f "$QUALITYNET_MODEL" ]]; then
  TINY=--tiny
  QUALITYNET_KIND=tiny
  if [[ "${QP_LOADTEST_FULL:-0}" == 1 ]]; then TINY=; QUALITYNET_KIND=full; fi
  echo "== generating QualityNet ($QUALITYNET_KIND) into $WORK"
  "$PYTHON" "$ROOT/tools/qualitynet.py" "$WORK/qualitynet.onnx" $TINY >/dev/null
  "$CONVERT" "$WORK/qualitynet.onnx" -o "$WORK/qualitynet.qpw" >/dev/null
  QUALITYNET_MODEL="$WORK/qualitynet.qpw"
fi

echo "== starting the server on 127.0.0.1:$PORT"
# shellcheck disable=SC2086
QP_LOG=warn "$SERVE" --host 127.0.0.1 --port "$PORT" \
  --model "$FEATURES_MODEL" --model "$QUALITYNET_MODEL" $SERVER_FLAGS 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 600); do
  if curl -fsS "$BASE/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the server exited:" >&2; cat "$WORK/server.log" >&2; exit 1
  fi
  sleep 0.1
done
curl -fsS "$BASE/ready" >/dev/null

curl -fsS "$BASE/model" >"$WORK/model.json"
# Writes one wrk Lua script per scenario from the models' feature metadata.
"$PYTHON" - "$WORK" <<'PY'
import base64, json, struct, sys, zlib
work = sys.argv[1]
models = {m["name"]: m for m in json.load(open(f"{work}/model.json"))["models"]}

def features(model):
    out = []
    for spec in model["inputs"]:
        out += spec.get("features") or []
    return out

def png(width, height):
    raw = b"".join(
        b"\0" + b"".join(bytes((x * 4 % 256, y * 5 % 256, x * y % 256)) for x in range(width))
        for y in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

DONE = r'''
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT req/s=%.1f p50=%.2fms p90=%.2fms p99=%.2fms max=%.2fms requests=%d non2xx=%d socket_errors=%d\n",
    summary.requests / s, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end
'''

def random_script(name, feats, extra, pool):
    names = ", ".join(json.dumps(f["name"]) for f in feats)
    mins = ", ".join(repr(f["min"]) for f in feats)
    maxs = ", ".join(repr(f["max"]) for f in feats)
    return f'''
local names = {{{names}}}
local mins = {{{mins}}}
local maxs = {{{maxs}}}
local extra = {json.dumps(extra)}
local headers = {{["Content-Type"] = "application/json"}}
-- Requests are made up front, {pool} per wrk thread, so that wrk spends its share of the
-- 2 cores sending rather than formatting. The pool is cycled: with more distinct bodies
-- than the server's cache holds (10,000 entries by default) an LRU never hits, which the
-- script checks through /metrics.
local pool, size, next_request = {{}}, {pool}, 0
-- Each wrk thread has its own Lua state; seed each differently or they send the same bodies.
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
init = function(args)
  math.randomseed(os.time() * 1000 + (seed or 0) * 7919)
  for k = 1, size do
    local parts = {{}}
    for i, n in ipairs(names) do
      parts[#parts + 1] = string.format('"%s":%.6f', n, mins[i] + (maxs[i] - mins[i]) * math.random())
    end
    pool[k] = wrk.format("POST", "/predict?model={name}", headers, "{{" .. table.concat(parts, ",") .. extra .. "}}")
  end
end
request = function()
  next_request = next_request % size + 1
  return pool[next_request]
end
''' + DONE

feature_model = models["qualitynet-features"]
open(f"{work}/features.lua", "w").write(random_script("qualitynet-features", features(feature_model), "", 40000))
image_b64 = base64.b64encode(png(64, 48)).decode()
open(f"{work}/image.lua", "w").write(
    random_script("qualitynet", features(models["qualitynet"]), f',"image":"{image_b64}"', 1000))
fixed = {f["name"]: (f["min"] + f["max"]) / 2 for f in features(feature_model)}
open(f"{work}/cached.lua", "w").write(f'''
wrk.method = "POST"
wrk.path = "/predict?model=qualitynet-features"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {json.dumps(json.dumps(fixed))}
''' + DONE)
PY

echo "== QualityNet: $QUALITYNET_KIND; $CONNECTIONS connections, $WRK_THREADS wrk threads, $DURATION each"
cache_hits() { curl -fsS "$BASE/metrics" | awk '/^qp_cache_hits_total/ {print $2}'; }
for scenario in $SCENARIOS; do
  # Warm the path (and, for `cached`, fill the cache) before measuring.
  wrk -t1 -c1 -d1s --timeout "$WRK_TIMEOUT" -s "$WORK/$scenario.lua" "$BASE" >/dev/null
  hits_before=$(cache_hits)
  line=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout "$WRK_TIMEOUT" -s "$WORK/$scenario.lua" "$BASE" | grep '^RESULT' || true)
  printf '%-9s %s cache_hits=%s\n' "$scenario" "${line#RESULT }" "$(($(cache_hits) - hits_before))"
done

echo "== server metrics"
curl -fsS "$BASE/metrics" | grep -E '^qp_(mean_batch_size|engine_runs_total|inferences_total|cache_hits_total|rejections_total)' || true

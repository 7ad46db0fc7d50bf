#!/usr/bin/env bash
# Detection -> tracking -> a counting line -> events on MQTT, on the CPU, against a private local broker:
# the tracking sample (cards walking over a real photo, their detector and their true line crossings),
# `edgekit run --track --line ... --mqtt`, a subscriber counting what arrives, and the true counts.
# Needs mosquitto (Debian: apt-get install mosquitto) and pip install 'edgekit[analytics]'.
# Usage: bash examples/track_mqtt.sh [WORKDIR]
set -euo pipefail
work=${1:-edgekit-track-mqtt}
port=${PORT:-18830}
mkdir -p "$work"
cd "$work"
step() { printf '\n==> %s\n' "$*"; }

step "edgekit sample-data --task track data"
edgekit sample-data --task track data --force

step "a private mosquitto on 127.0.0.1:$port"
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
mkdir -p broker
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n%s\n' "$port" \
    "$( [ "$(id -u)" = 0 ] && echo 'user root' )" > broker/mosquitto.conf
"$mosquitto" -c broker/mosquitto.conf & broker=$!
trap 'kill $broker 2>/dev/null' EXIT
sleep 1

step "a subscriber to edgekit/# (QoS 1)"
python3 - "$port" <<'PY' > received.jsonl & sub=$!
import json, sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="example-sub", clean_session=False)
c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("edgekit/#", qos=1)
c.on_message = lambda c, u, m: print(json.dumps({"topic": m.topic, **json.loads(m.payload)}), flush=True)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
PY
sleep 1

step "edgekit run data/cards.bundle track=data/track.mp4 --track --line door=0,120,320,120 --mqtt mqtt://127.0.0.1:$port/edgekit"
edgekit run data/cards.bundle track=data/track.mp4 --track --line door=0,120,320,120 \
    --mqtt "mqtt://127.0.0.1:$port/edgekit" --spool spool --json tracks.jsonl --record tracks.mp4
sleep 1
kill $sub

step "line door: counts received over MQTT against the video's true crossings"
python3 - <<'PY'
import collections, json
got = [json.loads(l) for l in open("received.jsonl")]
events = {e["id"]: e for e in got if e["topic"].endswith("/line_crossed")}  # ids drop any repeat
truth = json.load(open("data/track.truth.json"))["crossings"]
count = lambda items: dict(collections.Counter(f"{e['direction']} {e['label']}" for e in items))
print("topics:", sorted({e["topic"] for e in got}))
print("received:", count(events.values()))
print("true:    ", count(truth))
print("exact" if count(events.values()) == count(truth) else "DIFFERENT")
PY

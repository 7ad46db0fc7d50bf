"""Tracking, lines and zones: units, and the tracking sample run end to end with --track --line."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error


def test_line_counts_a_jittering_track_once_with_direction():
    from edgekit.analytics.lines import Line

    line = Line("door", (0, 100, 200, 100), band=4)
    ys = [80, 90, 97, 103, 98, 102, 96, 104, 99, 106, 120, 130]  # down through the band, jittering
    got = [line.update(1, (50, y)) for y in ys]
    assert [g for g in got if g] == ["in"]
    assert [g for g in (line.update(1, (50, y)) for y in (110, 95, 80)) if g] == ["out"]  # back up
    # beside the segment's end: no crossing
    assert [line.update(2, (250, y)) for y in (80, 120)] == [None, None]


def test_zone_enters_once_exits_with_dwell_and_counts_occupancy_per_label():
    from edgekit.analytics.zones import Zone

    zone = Zone("q", (0, 0, 100, 0, 100, 100, 0, 100), band=2)
    assert zone.update(1, "red", (50, 50), 0.0) == ("entered", None)
    assert zone.update(1, "red", (99, 50), 1.0) is None  # within the band of the edge: still inside
    assert zone.update(1, "red", (101, 50), 1.5) is None
    assert zone.update(2, "blue", (10, 10), 2.0) == ("entered", None)
    assert zone.occupancy() == {"red": 1, "blue": 1}
    assert zone.update(1, "red", (110, 50), 3.0) == ("exited", 3.0)
    assert zone.end(2, 5.0) == 3.0 and zone.occupancy() == {}


def test_options_and_file_build_per_source_lines(tmp_path):
    from edgekit.analytics.config import build

    f = tmp_path / "a.json"
    f.write_text(json.dumps({"lines": {"a": [0, 1, 2, 3]}, "sources": {"cam2": {"zones": {"z": [0, 0, 5, 0, 5, 5]}}},
                             "tracker": {"lost_frames": 5}}))
    cfg = build(["cam2:b=1,1,9,9"], [], f)
    lines, zones = cfg.for_source("cam2")
    assert [s.name for s in lines] == ["a", "b"] and [z.name for z in zones] == ["z"]
    assert [s.name for s in cfg.for_source("other")[0]] == ["a"] and cfg.tracker.lost_frames == 5


@pytest.mark.parametrize("args, fragment", [
    (["--line", "door=1,2,3"], "a line needs 4 numbers"),
    (["--zone", "q=0,0,1,1"], "a zone needs at least 3 points"),
    (["--line", "cam9:door=0,0,5,5"], "unknown source(s) cam9"),
    (["--mqtt", "http://broker"], "expected mqtt://"),
    (["--mqtt-ca", "x.pem"], "--mqtt-ca needs --mqtt"),
])
def test_bad_analytics_options_are_one_line_errors(cli, track_sample, args, fragment):
    assert_one_line_error(cli("run", track_sample / "cards.bundle", track_sample / "track.mp4", *args), fragment)


@pytest.fixture(scope="module")
def tracked(track_sample, tmp_path_factory):
    """The tracking sample run with `edgekit run --track --line door` (the loop, the card detector, ByteTrack)."""
    from edgekit.cli import main

    data = track_sample
    out_dir = tmp_path_factory.mktemp("tracked")
    truth = json.loads((data / "track.truth.json").read_text())
    out = out_dir / "out.jsonl"
    line = ",".join(str(v) for v in truth["lines"]["door"])
    try:
        main(["run", str(data / "cards.bundle"), str(data / "track.mp4"), "--track", "--line", f"door={line}",
              "--json", str(out), "--record", str(out_dir / "out.avi"), "-q"])
    except SystemExit as exc:
        assert not exc.code, exc
    return truth, [json.loads(x) for x in out.read_text().splitlines()], out_dir / "out.avi", data


def test_tracking_sample_scores_well_with_motmetrics(tracked):
    mm = pytest.importorskip("motmetrics", reason="motmetrics is not installed (pip install motmetrics)")
    import numpy as np

    truth, lines, *_ = tracked
    acc = mm.MOTAccumulator(auto_id=True)
    for line in lines:
        gt = truth["frames"][line["frame"]]
        hyp = line["results"]
        dist = np.array([[_iou_distance(g["box"], h["box"]) for h in hyp] for g in gt]).reshape(len(gt), len(hyp))
        acc.update([g["track"] for g in gt], [h["track_id"] for h in hyp], dist)
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "num_switches", "mota", "num_frames", "num_misses"], name="sample")
    row = summary.loc["sample"]
    print(f"\ntracking sample: IDF1 {row['idf1']:.3f}, ID switches {int(row['num_switches'])}, "
          f"MOTA {row['mota']:.3f} over {int(row['num_frames'])} frames, {int(row['num_misses'])} true boxes missed")
    assert int(row["num_frames"]) == len(truth["frames"])
    assert row["idf1"] >= 0.9 and int(row["num_switches"]) <= 1


def _iou_distance(a, b, max_distance=0.5) -> float:
    """1 - IoU of two [x1, y1, x2, y2] boxes; NaN (no match) past ``max_distance`` (motmetrics' convention)."""
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    d = 1 - inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    return float("nan") if d > max_distance else d


def test_line_counts_on_the_tracking_sample_are_exact(tracked):
    truth, lines, *_ = tracked
    events = [e for line in lines for e in line["events"]]
    assert all(e["event"] == "line_crossed" and e["line"] == "door" for e in events)
    count = lambda items: sorted((e["direction"], e["label"]) for e in items)  # noqa: E731
    print(f"\nline door: {len(events)} crossings counted, {len(truth['crossings'])} true: {count(events)}")
    assert count(events) == count(truth["crossings"])
    assert len({e["id"] for e in events}) == len(events)


def test_line_and_track_ids_are_drawn_on_recorded_frames(tracked):
    import cv2
    import numpy as np

    _, _, video, data = tracked
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok
    def yellow(image):  # the line door at y = 120, through MJPEG's chroma blur
        b, g, r = (image[118:123, 5:300, i].astype(int) for i in range(3))
        return ((g - b > 60) & (r - b > 60)).any(axis=0).mean()

    plain = cv2.VideoCapture(str(data / "track.mp4"))
    ok, raw = plain.read()
    plain.release()
    assert ok and yellow(frame) > 0.9 and yellow(raw) < 0.05
    assert np.abs(frame.astype(int) - raw.astype(int)).max() > 100


def test_counts_reach_metrics_and_status():
    from edgekit.analytics.config import build
    from edgekit.analytics.stage import Analytics
    from edgekit.stream.metrics import Metrics

    stage = Analytics(build(["door=0,100,200,100"], ["q=0,0,200,0,200,60,0,60"]))
    metrics = Metrics()
    metrics.exporters.append(stage)
    for k, y in enumerate(range(10, 200, 10)):  # one card walking down through the zone and over the line
        box = [90, y - 16, 114, y + 16]
        stage.process("cam", [{"label": "red", "class": 0, "score": 0.9, "box": box}], k, 1000.0 + k)
    text = metrics.prometheus()
    assert 'edgekit_line_crossings_total{source="cam",line="door",direction="in",label="red"} 1' in text
    assert 'edgekit_zone_entries_total{source="cam",zone="q",label="red"} 1' in text
    assert 'edgekit_zone_exits_total{source="cam",zone="q",label="red"} 1' in text
    status = metrics.snapshot()["analytics"]["cam"]
    assert status["lines"] == {"door": {"in": {"red": 1}}} and status["tracks_total"] == 1
    assert status["zones"]["q"]["entries"] == {"red": 1} and status["zones"]["q"]["dwell_s"] == {}


def test_tracking_without_its_library_or_on_a_classifier_is_one_line_error(cli, track_sample, tiny_bundle, monkeypatch):
    assert_one_line_error(cli("run", tiny_bundle.path, track_sample / "track.mp4", "--track"),
                          "need a detection bundle")
    monkeypatch.setitem(__import__("sys").modules, "supervision", None)  # as if not installed
    assert_one_line_error(cli("run", track_sample / "cards.bundle", track_sample / "track.mp4", "--track"),
                          "pip install 'edgekit[analytics]'")

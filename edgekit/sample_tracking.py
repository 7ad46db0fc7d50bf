"""The tracking sample: coloured cards moving over a grey real photo, with their true tracks and
their true crossings of a counting line.

``track.mp4`` (320x240, 15 fps, 120 frames) shows six cards (24x32 pixels, red, green or blue)
walking set paths: across the line ``door`` (y = 120, drawn left to right, so moving down is
``in``), back and forth over it, standing on it and jittering for two seconds, and behind a grey
pillar that hides them for a few frames. ``track.truth.json`` holds per frame each visible card's
track id, label and box, the line, and the crossings: a card crosses when its centre goes from
more than 10 pixels on one side to more than 10 pixels on the other (so standing on the line is
not crossing). ``cards.bundle`` is the detector that sees them (:mod:`edgekit.tiny_detect`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgekit.atomic import atomic_dir
from edgekit.errors import EdgekitError

SIZE = (240, 320)  # height, width
FPS = 15
FRAMES = 120
LINE = ("door", (0.0, 120.0, 320.0, 120.0))
PILLAR = (154, 166)  # x range of the grey pillar in front of the cards: hides half a card
BGR = {"red": (40, 40, 225), "green": (40, 200, 40), "blue": (225, 60, 40)}
SETTLED = 10.0  # pixels from the line a centre must be to be on a side


def _paths() -> list[tuple[str, dict[int, tuple[float, float]]]]:
    """(label, {frame: top-left (x, y)}) per card."""
    def walk(points, start):
        """Straight moves between (x, y, frames-to-get-there) waypoints, from frame ``start``."""
        out, t = {}, start
        (x, y, _), rest = points[0], points[1:]
        out[t] = (x, y)
        for nx, ny, n in rest:
            for k in range(1, n + 1):
                out[t + k] = (x + (nx - x) * k / n, y + (ny - y) * k / n)
            t, x, y = t + n, nx, ny
        return out

    jitter = walk([(200, 30, 0), (200, 104, 30)], 0)
    for k in range(1, 31):  # standing on the line: the centre within 3 px of it
        jitter[30 + k] = (200 + 2 * np.sin(k * 1.3), 104 + 3 * np.sin(k * 2.1))
    jitter.update({t + 60: p for t, p in walk([(200, 104, 0), (200, 196, 30)], 0).items()})
    return [
        ("red", walk([(40, 20, 0), (40, 190, 60)], 0)),  # down: in
        ("green", walk([(110, 196, 0), (110, 20, 60)], 10)),  # up: out
        ("blue", jitter),  # down, stands on the line, down: one in
        ("red", walk([(270, 40, 0), (270, 180, 40), (270, 40, 40)], 30)),  # down and back up: in, out
        ("green", walk([(20, 60, 0), (290, 60, 60)], 40)),  # across, behind the pillar, never over the line
        ("blue", walk([(290, 150, 0), (10, 150, 70)], 45)),  # across below the line, behind the pillar
    ]


def truth() -> dict:
    """Frames (visible cards: track, label, box), the line and its true crossings."""
    frames = [[] for _ in range(FRAMES)]
    crossings = []
    y_line = LINE[1][1]
    cw, ch = 24, 32
    for track, (label, path) in enumerate(_paths(), start=1):
        side = None
        for t in sorted(path):
            if t >= FRAMES:
                break
            x, y = path[t]
            box = [round(x), round(y), round(x) + cw, round(y) + ch]
            hidden = max(0, min(box[2], PILLAR[1]) - max(box[0], PILLAR[0])) / cw
            if hidden < 0.5:  # a card more than half behind the pillar is not there to be seen
                frames[t].append({"track": track, "label": label, "box": [float(v) for v in box]})
            d = (box[1] + box[3]) / 2 - y_line
            now = 1 if d > SETTLED else -1 if d < -SETTLED else side
            if side is not None and now != side:
                crossings.append({"line": LINE[0], "track": track, "label": label, "frame": t,
                                  "direction": "in" if now > 0 else "out"})
            side = now
    return {"size": list(SIZE), "fps": FPS, "lines": {LINE[0]: list(LINE[1])}, "frames": frames,
            "crossings": crossings}


def render(background: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """The video's frames (BGR) over ``background`` (any photo; made grey and fitted to SIZE)."""
    import cv2

    h, w = SIZE
    grey = cv2.cvtColor(cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    base = cv2.cvtColor((grey * 0.6 + 40).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(FRAMES):
        image = base.copy()
        for label, path in _paths():
            if t in path:
                x, y = (int(round(v)) for v in path[t])
                image[y : y + 32, x : x + 24] = BGR[label]
        image[:, PILLAR[0] : PILLAR[1]] = 128
        noise = rng.normal(0, 3, image.shape)
        frames.append(np.clip(image + noise, 0, 255).astype(np.uint8))
    return frames


def write_tracking_sample(out: str | os.PathLike, force: bool = False) -> Path:
    """Write ``track.mp4``, ``track.truth.json`` and ``cards.bundle`` under ``out``."""
    import cv2

    from edgekit.sample_data import sample_photos
    from edgekit.tiny_detect import write_card_detector

    frames = render(sample_photos()[0])
    with atomic_dir(out, force=force) as tmp:
        writer = cv2.VideoWriter(str(tmp / "track.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (SIZE[1], SIZE[0]))
        if not writer.isOpened():
            raise EdgekitError("this OpenCV cannot write mp4v video")
        for frame in frames:
            writer.write(frame)
        writer.release()
        (tmp / "track.truth.json").write_text(json.dumps(truth()))
        write_card_detector(tmp / "cards.bundle", SIZE)
    return Path(out)

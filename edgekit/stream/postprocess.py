"""Postprocessing per task: model outputs -> JSON-able results, and drawing them on a frame.

A postprocessor is registered under the manifest's ``task`` with :func:`register`; it is called
with the runner's outputs for one frame (batch of one) and that frame's (height, width), and has
``draw(image, results)``.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import BundleError

POSTPROCESSORS: dict[str, type] = {}


def register(task: str):
    """Class decorator: the postprocessor for ``task``."""

    def deco(cls):
        POSTPROCESSORS[task] = cls
        return cls

    return deco


def for_bundle(bundle, **options):
    """The postprocessor for the bundle's task, built from its manifest."""
    cls = POSTPROCESSORS.get(bundle.task)
    if cls is None:
        raise BundleError(f"no postprocessing for task {bundle.task!r} (have: {', '.join(POSTPROCESSORS)})")
    return cls.from_bundle(bundle, **options)


def draw_text(image: np.ndarray, lines: list[str], origin=(0, 0), shade: bool = False) -> None:
    """Write ``lines`` in white on a dark box at ``origin``, scaled to the image size (in place); with
    ``shade`` the box only darkens what is under it (boxes drawn there stay visible)."""
    import cv2

    scale = max(0.35, min(image.shape[:2]) / 480)
    thick = max(1, round(scale * 1.5))
    x, y = origin
    for line in lines:
        (w, h), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, h // 4)
        if shade:
            area = image[max(0, y) : y + h + base + 2 * pad, max(0, x) : x + w + 2 * pad]
            area //= 2
        else:
            cv2.rectangle(image, (x, y), (x + w + 2 * pad, y + h + base + 2 * pad), (0, 0, 0), -1)
        cv2.putText(image, line, (x + pad, y + pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
        y += h + base + 2 * pad


@register("classification")
class Classification:
    """Top-k classes with labels and scores (softmax applied when the output is logits)."""

    def __init__(self, labels: list[str], output: str | None = None, top_k: int = 1, logits: bool = False):
        if top_k < 1:
            raise BundleError("top-k must be at least 1")
        self.labels, self.output, self.top_k, self.logits = list(labels), output, top_k, logits

    @classmethod
    def from_bundle(cls, bundle, top_k: int = 1) -> "Classification":
        out = (bundle.manifest.get("outputs") or [{}])[0]
        return cls(bundle.labels, out.get("name"), top_k, out.get("meaning") == "logits")

    def __call__(self, outputs: dict[str, np.ndarray], frame_size: tuple[int, int] | None = None) -> list[dict]:
        scores = outputs[self.output] if self.output in outputs else next(iter(outputs.values()))
        scores = np.asarray(scores, np.float64).reshape(-1)
        if self.logits:
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        top = np.argsort(-scores, kind="stable")[: self.top_k]
        return [
            {"class": int(i), "label": self.labels[i] if i < len(self.labels) else str(int(i)), "score": round(float(scores[i]), 6)}
            for i in top
        ]

    def draw(self, image: np.ndarray, results: list[dict]) -> np.ndarray:
        draw_text(image, [f"{r['label']} {r['score']:.2f}" for r in results])
        return image


NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class (golden-ratio hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


@register("detection")
class Detection:
    """Objects from the NMS outputs every detection runner returns (``num_detections``,
    ``detection_boxes`` normalised to the model input, ``detection_scores``, ``detection_classes``):
    ``{"label", "class", "score", "box": [x1, y1, x2, y2]}`` in source-frame pixels, best first.

    The runner has applied the score threshold (the bundle's, or ``run --score-threshold``).
    """

    def __init__(self, labels: list[str], preprocess):
        self.labels, self.prep = list(labels), preprocess

    @classmethod
    def from_bundle(cls, bundle, top_k: int = 1) -> "Detection":
        """``top_k`` is classification's and unused here: every object the runner returns is reported."""
        return cls(bundle.labels, bundle.preprocess)

    def __call__(self, outputs: dict[str, np.ndarray], frame_size: tuple[int, int] | None = None) -> list[dict]:
        missing = [k for k in NMS_OUTPUTS if k not in outputs]
        if missing:
            raise BundleError(f"the runner gave no {', '.join(missing)}: a detection runner returns the NMS outputs")
        n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(outputs["detection_boxes"], np.float64).reshape(-1, 4)[:n]
        scores = np.asarray(outputs["detection_scores"], np.float64).reshape(-1)[:n]
        classes = np.asarray(outputs["detection_classes"]).reshape(-1)[:n].astype(np.int64)
        keep = np.argsort(-scores, kind="stable")
        pixels = self.prep.boxes_to_frame(boxes[keep], frame_size or self.prep.size)
        return [
            {"label": self.labels[c] if 0 <= c < len(self.labels) else str(c), "class": int(c),
             "score": round(float(scores[i]), 6), "box": [round(float(v), 1) for v in box]}
            for i, c, box in zip(keep, classes[keep], pixels)
        ]

    def draw(self, image: np.ndarray, results: list[dict]) -> np.ndarray:
        """Each object's box and ``label score`` in its class colour (in place)."""
        import cv2

        scale = max(0.35, min(image.shape[:2]) / 640)
        thick = max(1, round(min(image.shape[:2]) / 240))
        for r in results:
            x1, y1, x2, y2 = (int(round(v)) for v in r["box"])
            colour = class_colour(r["class"])
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, thick)
            text = f"{r['label']} {r['score']:.2f}"
            (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = y1 - h - base - 2 if y1 - h - base - 2 >= 0 else y1
            cv2.rectangle(image, (x1, top), (x1 + w + 4, top + h + base + 2), colour, -1)
            cv2.putText(image, text, (x1 + 2, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        return image

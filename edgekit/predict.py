"""Labelled results for frames in a script: the loop's preprocessing, runner and postprocessing, without the loop.

::

    with Predictor("bundle") as predictor:
        results = predictor.predict(frame_bgr)  # [{"class": 3, "label": "3", "score": 0.98}]
        per_frame = predictor.predict([frame_a, frame_b])  # one result list per frame, one model call
"""

from __future__ import annotations

import os

import numpy as np

from edgekit.bundle import Bundle


class Predictor:
    """A bundle ready to label uint8 BGR frames (as OpenCV reads them), on ``backend`` at ``precision``.

    ``predict`` returns what ``edgekit run`` writes as ``results``: for a classifier, the ``top_k``
    classes as ``{"class", "label", "score"}``. A context manager: the runner (and on TensorRT, its
    engine) is set up on entry and released on exit. ``runner_options`` go to
    :func:`~edgekit.backends.select.open_runner` (``cache_dir``, ``intra_op_threads`` …).
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, backend: str = "auto", precision: str = "auto",
                 top_k: int = 1, **runner_options):
        from edgekit.backends.select import open_runner
        from edgekit.stream import postprocess

        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.preprocess = self.bundle.preprocess
        self.postprocess = postprocess.for_bundle(self.bundle, top_k=top_k)
        self.runner = open_runner(self.bundle, backend, precision, **runner_options)

    def __enter__(self) -> "Predictor":
        from edgekit.stream.infer import batch_limit

        self.runner.activate()
        self._limit = batch_limit(self.runner)
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    def predict(self, frames: np.ndarray | list[np.ndarray]) -> list[dict] | list[list[dict]]:
        """The results for one uint8 BGR frame of any size (resized as the bundle says); for a list of
        frames (sizes may differ), one result list per frame, inferred as one batch (in slices when
        the model's batch is fixed)."""
        from edgekit.stream.infer import demux, infer_batch

        if isinstance(frames, np.ndarray):
            return self.predict([frames])[0]
        if not frames:
            return []
        tensor = np.stack([self.preprocess(f) for f in frames])
        outputs = demux(infer_batch(self.runner, tensor, self._limit), len(frames))
        return [self.postprocess(out, f.shape[:2]) for out, f in zip(outputs, frames)]

"""The REST API (:func:`ganorigin.serving.rest.create_rest_app`, the same contract) on Ray Serve, with
dynamic batching: concurrent ``POST /predict`` requests on a replica share one pass through the models.

Run it with ``serve run serve/config.yaml`` (replicas, autoscaling, batching there), or
``serve run ganorigin.scale.serve:app``. Each replica loads the weights once, from the environment
(``GANORIGIN_WEIGHTS_DIR`` / ``GANORIGIN_REPO_ID``, set in the config's ``runtime_env``), or ``source``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Optional

from ray import serve

from ..errors import InvalidImageError
from ..images import ImageInput
from ..pipeline import GANOrigin
from ..provenance import load_with_provenance
from ..result import Prediction
from ..serving.rest import create_rest_app
from ..serving.service import ModelService

MAX_BATCH_SIZE = 8  # images per forward pass on a replica
BATCH_WAIT_S = 0.05  # how long a first request waits for others to join its batch


class BatchingService(ModelService):
    """A :class:`ModelService` whose ``predict`` joins Serve's batch queue on the replica's event loop;
    ``batch_sizes`` records the size of every batch formed."""

    def __init__(self, loader, loop: asyncio.AbstractEventLoop, batched):
        super().__init__(loader)
        self._loop, self._batched = loop, batched
        self.batch_sizes: list[int] = []

    def predict(self, image: ImageInput, threshold: Optional[float] = None, align: Optional[bool] = None) -> Prediction:
        result = asyncio.run_coroutine_threadsafe(self._batched((image, threshold, align)), self._loop).result()
        if isinstance(result, InvalidImageError):
            raise result
        return result

    def predict_many(self, requests: list) -> list:
        """``(image, threshold, align)`` requests -> a Prediction or the InvalidImageError of each; the
        readable ones (grouped by ``align``) in one pass, each with its own threshold and provenance."""
        self.batch_sizes.append(len(requests))
        model = self.model
        decoded: list = []
        for image, _, _ in requests:
            try:
                decoded.append(load_with_provenance(image))
            except InvalidImageError as e:
                decoded.append(e)
        results: list = list(decoded)
        for align in {a for (_, _, a), d in zip(requests, decoded) if not isinstance(d, InvalidImageError)}:
            group = [i for i, ((_, _, a), d) in enumerate(zip(requests, decoded))
                     if a == align and not isinstance(d, InvalidImageError)]
            with self._run_lock:
                predictions = model.predict_decoded([decoded[i][0] for i in group], [requests[i][0] for i in group],
                                                    align=align)
            for i, prediction in zip(group, predictions):
                threshold = model.threshold if requests[i][1] is None else requests[i][1]
                results[i] = replace(prediction, threshold=threshold, provenance=decoded[i][1])
        return results


@serve.deployment(max_ongoing_requests=MAX_BATCH_SIZE * 2)
@serve.ingress()
class GANOriginDeployment:
    """One replica: the model (loaded once, in the background) behind the REST app."""

    def __init__(self, source: Optional[str] = None):
        def load() -> GANOrigin:
            return GANOrigin.from_pretrained(source)

        self.service = BatchingService(load, asyncio.get_running_loop(), self._predict_batch).start()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _predict_batch(self, requests: list) -> list:
        return await asyncio.get_running_loop().run_in_executor(None, self.service.predict_many, requests)

    def __serve_build_asgi_app__(self):
        return create_rest_app(self.service)

    def batch_sizes(self) -> list[int]:
        """The size of every batch this replica formed (for tests and tuning)."""
        return list(self.service.batch_sizes)

    def reconfigure(self, config: dict) -> None:
        """Serve's ``user_config``: ``max_batch_size`` and ``batch_wait_s`` of the dynamic batching."""
        self._predict_batch.set_max_batch_size(int(config.get("max_batch_size", MAX_BATCH_SIZE)))
        self._predict_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_s", BATCH_WAIT_S)))


app = GANOriginDeployment.bind()

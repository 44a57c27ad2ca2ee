"""The server's model service: loads in the background, reports what it is doing, recovers.

Proves that while weights load, ``ModelService.step`` shows the current download (the message
the weight resolver logs), that a failed load reports the error and refuses predictions with
``ModelUnavailableError``, and that ``reload`` then succeeds without a restart.
"""

from __future__ import annotations

import logging
import threading

import pytest

from ganorigin import WeightsNotFoundError
from ganorigin.service import ModelService, ModelUnavailableError


def test_loading_step_failure_and_reload(model, dev_sample):
    release = threading.Event()
    attempts = []

    def loader():
        attempts.append(1)
        logging.getLogger("ganorigin.weights").info("Downloading %s from Hub repo %s", "e4e_ffhq_encode.pt", "org/x")
        release.wait(30)
        if len(attempts) == 1:
            raise WeightsNotFoundError("GANOrigin could not find these weight files: e4e_ffhq_encode.pt")
        return model

    service = ModelService(loader).start()
    for _ in range(200):
        if service.step:
            break
        threading.Event().wait(0.01)
    assert service.state == "loading" and service.step == "Downloading e4e_ffhq_encode.pt from Hub repo org/x"
    with pytest.raises(ModelUnavailableError, match="still loading"):
        service.predict(dev_sample[0])

    release.set()
    assert service.wait(30) == "failed" and service.step is None
    assert "e4e_ffhq_encode.pt" in service.error and service.health()["weights_loaded"] is False
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        service.predict(dev_sample[0])

    assert service.reload().wait(30) == "ready"
    assert service.predict(dev_sample[0]) == model.predict(dev_sample[0])
    assert service.health()["weights_loaded"] is True

"""``predict`` on Ray Data: list -> read and decode (CPU tasks) -> the models (an actor pool) -> rows.

Each input is read and decoded through the gate in a CPU map stage, where its provenance is also
read. The models run in a pool of actors, each loading the weights once (one GPU per actor when
the cluster has GPUs); each turns a batch of decoded images into the local engine's rows
(:func:`ganorigin.training.evaluate` columns, the same numbers). The driver streams the rows into
the output as they come (:class:`ganorigin.scale.outputs.ResultSink`), which is also what makes a
re-run skip finished inputs. An unreadable input is an error row, never a failed job.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..errors import DatasetError, InvalidImageError
from ..hub import WeightSources
from ..verdict import COMMFOR_THRESHOLD
from .inputs import read_input
from .outputs import ResultSink

FLOAT_COLUMNS = ("fake_probability", "commfor_probability")
BOOL_COLUMNS = ("is_fake", "unknown")
DECODE_CPUS = 0.5  # reading and decoding is light next to the models; a small box runs it beside its actors
NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors, and what each reserves: ``cpus`` logical CPUs (as many torch threads),
    and one GPU each where the cluster has GPUs."""

    actors: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    @classmethod
    def for_cluster(cls, actors: Optional[int] = None, cpus: Optional[float] = None) -> "ActorPlan":
        """Default: one actor per GPU with half its share of the CPUs (the rest decode); without GPUs one
        actor with every CPU but one (which decodes)."""
        import ray

        if actors is not None and actors < 1:
            raise DatasetError(f"--actors must be at least 1; got {actors}.")
        if cpus is not None and not cpus > 0:
            raise DatasetError(f"--cpus-per-actor must be greater than 0; got {cpus:g}.")
        resources = ray.cluster_resources()
        gpus, total = int(resources.get("GPU", 0)), resources.get("CPU", 1.0)
        actors = actors or max(gpus, 1)
        if cpus is None and gpus:
            cpus = max(1, int(total) // actors // 2)
        elif cpus is None:
            cpus = max(1, int(total) // actors - 1) if total // actors >= 2 else (total - DECODE_CPUS) / actors
        if actors * cpus + DECODE_CPUS > total:  # the decode stage could never run: the job would wait forever
            raise DatasetError(f"{actors} actors x {cpus:g} CPUs leave no CPU for decoding on a cluster of "
                               f"{total:g} CPUs; pass fewer --actors or a smaller --cpus-per-actor.")
        return cls(actors=actors, cpus=cpus, gpus=1.0 if gpus else 0.0)

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus))


def row_schema(labels: Sequence[str]) -> pa.Schema:
    """The Arrow types of the local engine's row columns (:func:`ganorigin.training.evaluate._row`)."""
    from ..training.evaluate import _row

    def kind(name: str):
        if name in FLOAT_COLUMNS or name.startswith("p_"):
            return pa.float64()
        return pa.bool_() if name in BOOL_COLUMNS else pa.string()

    return pa.schema([(name, kind(name)) for name in _row("", None, list(labels), None)])


def decode(row: dict) -> dict:
    """CPU stage: one input's bytes, its pixels through the gate, and its provenance, or its error
    (``""``: none; a column of nulls would not keep its type through Ray's blocks)."""
    from ..provenance import load_with_provenance

    name = row["path"]
    try:
        data = read_input(name)
        image, provenance = load_with_provenance(data)
    except InvalidImageError as e:
        return {"path": name, "data": b"", "pixels": NO_PIXELS, "provenance": None, "error": f"{name}: {e}"}
    return {"path": name, "data": data, "pixels": np.asarray(image), "provenance": provenance, "error": ""}


class Predictor:
    """Model stage, one per actor: loads the weights once, then turns decoded batches into rows."""

    def __init__(self, sources: WeightSources, threshold: float, device: Optional[str], align: Optional[bool],
                 torch_threads: int, commfor_threshold: float = COMMFOR_THRESHOLD):
        import torch

        from ..pipeline import GANOrigin

        torch.set_num_threads(torch_threads)
        self.model = GANOrigin.from_pretrained(sources, threshold=threshold, device=device, align=align,
                                               commfor_threshold=commfor_threshold)
        self.labels = list(self.model.attributor.labels)
        self.schema = row_schema(self.labels)

    def __call__(self, batch: dict) -> pa.Table:
        from PIL import Image

        from ..training.evaluate import _row

        ok = [i for i, error in enumerate(batch["error"]) if not error]
        predictions = dict(zip(ok, self.model.predict_decoded(
            [Image.fromarray(batch["pixels"][i]) for i in ok], [batch["data"][i] for i in ok]))) if ok else {}
        rows = [_row(path, replace(predictions[i], provenance=batch["provenance"][i]) if i in predictions else None,
                     self.labels, batch["error"][i] or None)
                for i, path in enumerate(batch["path"])]
        return pa.Table.from_pylist(rows, schema=self.schema)


def predict_dataset(names: Sequence[str], sources: WeightSources, *, threshold: float, device: Optional[str] = None,
                    align: Optional[bool] = None, batch_size: int = 8, plan: Optional[ActorPlan] = None,
                    commfor_threshold: float = COMMFOR_THRESHOLD):
    """The Ray Dataset of rows for ``names`` (lazy: nothing runs until it is iterated); ``threshold`` is UFD's,
    ``commfor_threshold`` Community Forensics'."""
    import ray

    plan = plan or ActorPlan.for_cluster()
    blocks = max(1, min(math.ceil(len(names) / batch_size), 100_000))
    return (ray.data.from_items([{"path": name} for name in names], override_num_blocks=blocks)
            .map(decode, num_cpus=DECODE_CPUS)
            .map_batches(Predictor, batch_size=batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=plan.actors),
                         num_cpus=plan.cpus, num_gpus=plan.gpus,
                         fn_constructor_kwargs={"sources": sources, "threshold": threshold, "device": device,
                                                "align": align, "torch_threads": plan.torch_threads,
                                                "commfor_threshold": commfor_threshold}))


def run_predict(names: Sequence[str], sink: ResultSink, sources: WeightSources, *, threshold: float,
                on_rows: Optional[Callable[[pa.Table], None]] = None, **options) -> int:
    """Score every name not yet in ``sink``, writing rows as they come; returns how many were scored."""
    todo = [name for name in names if name not in sink.done]
    if not todo:
        return 0
    for table in predict_dataset(todo, sources, threshold=threshold, **options).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        sink.write(table)
        if on_rows is not None:
            on_rows(table)
    return sink.written


def quiet_ray_env() -> dict:
    """Environment for a Ray started here: no usage reports, no dashboard (nothing reaches out to the web)."""
    return {"RAY_USAGE_STATS_ENABLED": "0"}


class _Without(logging.Filter):
    """Drops one logger's records that say ``words``."""

    def __init__(self, words: str):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


# Ray's notes that a command's user can do nothing about: the local instance's token authentication (on, as it
# should be), and that our --no-progress is in effect.
_RAY_NOTES = {"ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
              "ray.data._internal.progress": "Progress bars disabled"}


def _quiet_ray_console() -> None:
    """Ray Data's messages: warnings and errors only (Ray's own: ``ray.init(logging_level=WARNING)``), less
    :data:`_RAY_NOTES`."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name, words in _RAY_NOTES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Without) for f in logger.filters):
            logger.addFilter(_Without(words))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A cluster's ``HOST:PORT`` (its GCS) must take a connection: Ray itself waits minutes for one that does not.
    ``auto`` and ``ray://`` addresses are Ray's to try (it gives up within a minute)."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


class RaySession:
    """Join the cluster at ``address`` (``auto``, ``ray://…``), or start a local Ray instance and stop it
    on exit; inside a process where Ray already runs, use it as it is."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None):
        self.address, self.num_cpus = address, num_cpus
        self._started = False

    def __enter__(self) -> "RaySession":
        import ray
        import ray.data  # noqa: F401  (configures its loggers, which _quiet_ray_console then sets)

        os.environ.update({k: v for k, v in quiet_ray_env().items() if k not in os.environ})
        _quiet_ray_console()
        if not ray.is_initialized():
            if self.address:
                try:
                    _check_reachable(self.address)
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
                except OSError as e:  # refused, timed out, no such host
                    raise DatasetError(f"No Ray cluster answers at --address {self.address} ({e}); start one "
                                       "(`ray start --head`) or leave --address out to run on a local Ray.") from None
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self._started:
            ray.shutdown()

"""``extract`` on Ray Data: the local engine's shards (:mod:`ganorigin.training.features`), with images
read, augmented and preprocessed in a CPU stage and e4e in an actor pool. Resumable as the local
engine is: the shards are the index of finished images, and the same settings are required."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from ..align import alignment_setting
from ..errors import InvalidImageError
from ..hub import WeightSources
from ..training import ExtractSummary
from ..training.features import _Item, _prepare, _write_shard, encoder_fingerprint, extraction_plan
from .batch import DECODE_CPUS, ActorPlan

NO_FEATURES = np.zeros(0, dtype=np.float32)


def prepare(row: dict, seed: int, align: bool) -> dict:
    """CPU stage: one image copy as e4e's input tensor, and its file's digest (or its error)."""
    from ..hub.integrity import sha256_file

    item = _Item(row["key"], row["label"], Path(row["path"]), row["copy"])
    try:
        return {**row, "pixels": _prepare(item, seed, align).numpy(), "source": sha256_file(item.path), "error": ""}
    except InvalidImageError as e:
        return {**row, "pixels": NO_FEATURES, "source": "", "error": str(e)}


class Encoder:
    """Model stage, one per actor: e4e loaded once; a batch of input tensors -> flattened W+ codes."""

    def __init__(self, sources: WeightSources, device: Optional[str], torch_threads: int):
        import torch

        from ..factory import as_device, load_encoder
        from ..hub import resolve_file

        torch.set_num_threads(torch_threads)
        self.device = as_device(device)
        self.encoder = load_encoder(resolve_file("e4e.ffhq_encode", sources)).to(self.device).eval()

    def __call__(self, batch: dict) -> pa.Table:
        import torch

        ok = [i for i, error in enumerate(batch["error"]) if not error]
        features = [NO_FEATURES] * len(batch["key"])
        if ok:
            with torch.inference_mode():
                inputs = torch.stack([torch.from_numpy(batch["pixels"][i]) for i in ok]).to(self.device)
                codes = self.encoder(inputs).flatten(1).float().cpu().numpy()
            for i, code in zip(ok, codes):
                features[i] = code
        columns = {name: list(batch[name]) for name in ("key", "label", "path", "copy", "source", "error")}
        return pa.table({**columns, "features": pa.array(features, type=pa.list_(pa.float32()))})


def _fingerprint_of(sources: WeightSources) -> str:
    """The e4e weights' :func:`~ganorigin.training.features.encoder_fingerprint`, as the actors will load them."""
    from ..factory import load_encoder
    from ..hub import resolve_file

    return encoder_fingerprint(load_encoder(resolve_file("e4e.ffhq_encode", sources)))


def run_extract(data_dir: Path, out_dir: Path, sources: WeightSources, *, augment: int = 0, seed: int = 0,
                batch_size: int = 8, shard_size: int = 512, limit: Optional[int] = None, align: Optional[bool] = None,
                prune: bool = False, device: Optional[str] = None, plan: Optional[ActorPlan] = None) -> ExtractSummary:
    """:func:`ganorigin.training.extract_features` on the Ray cluster this process is connected to."""
    import ray

    align = alignment_setting(align)
    work = extraction_plan(data_dir, out_dir, augment=augment, seed=seed, align=align,
                           encoder=_fingerprint_of(sources), prune=prune)
    todo = [{"key": i.key, "label": i.label, "path": str(i.path), "copy": i.copy}
            for i in work.items if i.key not in work.done]
    summary = work.summary()
    if not todo:
        summary.complete = True
        return summary
    plan = plan or ActorPlan.for_cluster()
    dataset = (ray.data.from_items(todo, override_num_blocks=max(1, min(-(-len(todo) // batch_size), 100_000)))
               .map(prepare, fn_kwargs={"seed": seed, "align": align}, num_cpus=DECODE_CPUS)
               .map_batches(Encoder, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus,
                            num_gpus=plan.gpus, fn_constructor_kwargs={"sources": sources, "device": device,
                                                                       "torch_threads": plan.torch_threads}))
    buffer: dict = {"keys": [], "labels": [], "paths": [], "sources": [], "copies": [], "features": []}
    try:
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in table.to_pylist():
                if row["error"]:
                    summary.failed.append((row["path"], row["error"]))
                    continue
                for name, value in (("keys", row["key"]), ("labels", row["label"]), ("paths", row["path"]),
                                    ("sources", row["source"]), ("copies", row["copy"])):
                    buffer[name].append(value)
                buffer["features"].append(np.asarray(row["features"], dtype=np.float32)[None])
                summary.encoded += 1
            if len(buffer["keys"]) >= shard_size:
                _write_shard(out_dir, buffer)
            if limit is not None and summary.encoded >= limit:
                return summary
        summary.complete = True
        return summary
    finally:
        _write_shard(out_dir, buffer)  # also when stopped: nothing encoded is lost

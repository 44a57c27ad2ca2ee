"""Where a scaled-out job's rows go, as they arrive: a Parquet folder (one part file per batch, each
written whole or not at all), or the local engine's CSV / JSON lines file (appended and flushed row by
row). The output is also the job's index of finished inputs: a re-run skips every path in it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatasetError
from ..training import RowWriter

FORMATS = ("jsonl", "csv", "parquet")


class ResultSink:
    """Rows of ``fmt`` into ``out`` (a folder for Parquet, a file otherwise; None: stdout, not resumable)."""

    def __init__(self, out: Optional[Path], fmt: str):
        if fmt not in FORMATS:
            raise DatasetError(f"Unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}.")
        if fmt == "parquet" and out is None:
            raise DatasetError("--format parquet writes a folder of part files: pass --out FOLDER.")
        self.out, self.fmt = out, fmt
        self.done, self.done_failed = self._finished_paths()
        self.written = 0
        self.failed = 0
        self._stream = None
        self._writer: Optional[RowWriter] = None

    def _finished_paths(self) -> tuple:
        """The paths already in the output, and those of them whose row is an error; a row torn by an
        interruption is cut off first."""
        if self.out is None or not self.out.exists():
            return set(), set()
        if self.fmt == "parquet":
            parts = sorted(self.out.glob("*.parquet"))
            rows = pq.read_table(parts, columns=["path", "error"]).to_pylist() if parts else []
        else:
            _cut_torn_row(self.out)
            with open(self.out, newline="", encoding="utf-8") as f:
                rows = ([json.loads(line) for line in f if line.strip()] if self.fmt == "jsonl"
                        else list(csv.DictReader(f)))
        return {row["path"] for row in rows}, {row["path"] for row in rows if row.get("error")}

    def write(self, table: pa.Table) -> None:
        """One batch of rows."""
        if table.num_rows == 0:
            return
        self.written += table.num_rows
        self.failed += table.num_rows - table.column("error").null_count
        if self.fmt == "parquet":
            self.out.mkdir(parents=True, exist_ok=True)
            part = self.out / f"part-{uuid.uuid4().hex}.parquet"
            pq.write_table(table, f"{part}.tmp")
            os.replace(f"{part}.tmp", part)
            return
        if self._writer is None:
            self._writer = self._open()
        for row in table.to_pylist():
            self._writer.write(row)

    def _open(self) -> RowWriter:
        if self.out is None:
            return RowWriter(sys.stdout, self.fmt)
        header = None
        if self.fmt == "csv" and self.out.is_file() and self.out.stat().st_size:
            with open(self.out, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f))
        self._stream = open(self.out, "a", newline="", encoding="utf-8")
        return RowWriter(self._stream, self.fmt, fieldnames=header)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def read_rows(out: Path, fmt: str) -> list[dict]:
    """Every row of a finished output (for reports over it)."""
    if fmt == "parquet":
        return pq.read_table(sorted(out.glob("*.parquet"))).to_pylist()
    with open(out, newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            return [json.loads(line) for line in f if line.strip()]
        return list(csv.DictReader(f))


def _cut_torn_row(path: Path) -> None:
    """Drop a last line without its newline: the row being written when the job was stopped."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)

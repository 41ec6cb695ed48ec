"""``GET /v2/status`` and ``GET /v2/status/MODULE`` on the metrics port: the side modules' snapshots as JSON.

With ``--workers N`` each worker answers for itself (the kernel picks which one takes the connection): the
reply's ``worker`` field says which. Snapshots are taken on a worker thread: a provider may read the disk.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..status import StatusBoard

JSON = "application/json"


class StatusRoute:
    PATH = "/v2/status"

    def __init__(self, board: StatusBoard, worker: int | None):
        self.board = board
        self.worker = worker

    async def all(self) -> tuple[int, str, bytes]:
        modules = await asyncio.get_running_loop().run_in_executor(None, self.board.snapshot_all)
        return self._reply(200, {"worker": self.worker, "modules": modules})

    async def one(self, module: str) -> tuple[int, str, bytes]:
        if module not in self.board.names:
            known = ", ".join(self.board.names) or "none"
            return self._reply(404, {"error": f"no status for module '{module}': this server has {known}"})
        snap = await asyncio.get_running_loop().run_in_executor(None, self.board.snapshot, module)
        return self._reply(200, {"worker": self.worker, "module": module, "status": snap})

    @staticmethod
    def _reply(code: int, doc: dict[str, Any]) -> tuple[int, str, bytes]:
        return code, JSON, (json.dumps(doc, sort_keys=True, default=str) + "\n").encode()


__all__ = ["StatusRoute"]

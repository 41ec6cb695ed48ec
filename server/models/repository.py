"""Model repository manager: which versions exist, which are loaded, and swapping them safely.

A load builds every selected version completely (sessions created, warmed up) before one dict assignment
makes them the serving set, so requests see either the old set or the new one; a failed load leaves the old
set serving and records the reason. Retired versions close only after their in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from skewless.protos import model_config_pb2 as mc

from ..errors import FailedPrecondition, InvalidArgument, ModelLoadError, NotFound, Unavailable
from ..hooks import RepositoryEvent
from ..security.paths import contained, plain_file_name
from .config import (
    json_mentions_max_batch_size,
    mentions_max_batch_size,
    parse_config,
    parse_config_json,
    read_config_text,
)
from .overrides import check_external_data, read_override, remove_override, write_override
from .stats import Histogram
from .version import DEFAULT_MODEL_FILE, ModelVersion

log = logging.getLogger(__name__)

CONTROL_MODES = ("none", "explicit", "poll")
LOAD_SECONDS_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class VersionStatus:
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""


@dataclass
class ManagedModel:
    name: str
    serving: dict[int, ModelVersion] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    reason: str = ""  # model-level failure (no version could even be listed)
    wanted: bool = False  # should be serving: a load was asked for and no unload since
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded_signature: tuple | None = None
    # The versions the load under way will serve together (what version hooks check a version set against).
    loading: tuple[int, ...] = ()

    def latest_ready(self) -> ModelVersion | None:
        return self.serving[max(self.serving)] if self.serving else None


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numbered version folders; one that resolves outside the model folder (a symlink out) is skipped."""
    out = {}
    real = model_dir.resolve()
    for child in model_dir.iterdir() if model_dir.is_dir() else ():
        if child.is_dir() and child.name.isdigit() and not child.name.startswith("0"):
            resolved = child.resolve()
            if resolved.parent != real and real not in resolved.parents:
                log.warning("skipping %s: it resolves outside %s (model files must stay in the repository)",
                            child, model_dir)
                continue
            out[int(child.name)] = child
    return out


def select_versions(cfg: mc.ModelConfig, available: list[int]) -> list[int]:
    """Triton's version_policy: latest N (default 1), all, or specific versions."""
    available = sorted(available)
    which = cfg.version_policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        return sorted(v for v in set(cfg.version_policy.specific.versions) if v in available)
    n = cfg.version_policy.latest.num_versions if which == "latest" else 1
    return available[-max(1, n):]


def tree_signature(model_dir: Path) -> tuple:
    """(path, size, mtime) of every file: a change in any of them means the model changed."""
    entries = []
    for dirpath, _, files in os.walk(model_dir):
        for f in files:
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((str(p.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class ModelRepository:
    def __init__(self, root: Path, control_mode: str = "none", startup_models: list[str] | None = None,
                 poll_interval_s: float = 15.0, default_max_batch_size: int = 4):
        if control_mode not in CONTROL_MODES:
            raise ValueError(f"model control mode must be one of {CONTROL_MODES}, got '{control_mode}'")
        self.root = Path(root)
        self.control_mode = control_mode
        self.startup_models = startup_models or []
        self.poll_interval_s = poll_interval_s
        self.default_max_batch_size = default_max_batch_size
        self.models: dict[str, ManagedModel] = {}
        self.listeners: list[Callable[[str, bool], None]] = []
        self._poll_task: asyncio.Task | None = None
        self._seen_signature: dict[str, tuple] = {}
        self._failed_signature: dict[str, tuple] = {}
        self._retiring: set[asyncio.Task] = set()
        # What the metrics report of model management: (model, event) counts, event one of load (a version
        # made ready), load_failed, swap (a serving set replaced another) and unload; version build times.
        self.events: dict[tuple[str, str], int] = {}
        # Called with each version once it is built, before it serves (side modules attach their batch
        # observers here); an exception fails that load like any other load error.
        self.version_hooks: list[Callable[[ModelVersion], None]] = []
        # Called with each change of the serving set (event, model, versions before, after, details): the audit
        # log (audit/) registers here at app wiring. They must not raise.
        self.change_observers: list[RepositoryEvent] = []
        self.load_seconds = Histogram(LOAD_SECONDS_BOUNDS)
        self._overrides: dict[str, Path] = {}  # model -> the override folder it serves from (overrides.py)
        self._configs: dict[str, str] = {}  # model -> the JSON config override it serves with

    # -- discovery -----------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def start(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        if self.control_mode == "explicit":
            names = self.model_names() if "*" in self.startup_models else self.startup_models
        else:
            names = self.model_names()
        await self._load_each(names)
        if self.control_mode == "poll":
            for name in self.model_names():
                self._seen_signature[name] = tree_signature(self.root / name)
            self._poll_task = asyncio.create_task(self._poll_loop(), name="repository-poll")

    async def stop(self) -> None:
        if self._poll_task:
            self._poll_task.cancel()
        for name in list(self.models):
            await self._unload(name, "server shutting down")
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for name in list(self._overrides):
            remove_override(self._overrides.pop(name))

    # -- lookups on the request path ------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if not version:
            mv = model.latest_ready()
            if mv is None:
                raise Unavailable(f"Request for unknown model: '{name}' has no available versions")
            return mv
        try:
            v = int(version)
        except ValueError:
            raise InvalidArgument(
                f"Request for unknown model: '{name}' version '{version}' is not a valid version number"
            ) from None
        mv = model.serving.get(v)
        if mv is not None:
            return mv
        if v in model.status and model.status[v].state != "UNAVAILABLE":
            raise Unavailable(f"Request for unknown model: '{name}' version {v} is not at ready state")
        raise NotFound(f"Request for unknown model: '{name}' version {v} is not found")

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except Exception:
            return False
        return True

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) rows, as RepositoryIndex reports them."""
        rows = []
        for name in sorted(set(self.model_names()) | set(self.models)):
            model = self.models.get(name)
            if model is None or (not model.status and not model.serving):
                if not ready_only:
                    rows.append((name, "", "UNAVAILABLE", model.reason if model else "not loaded"))
                continue
            for v in sorted(set(model.status) | set(model.serving)):
                st = model.status.get(v, VersionStatus("READY"))
                state = "READY" if v in model.serving else st.state
                if ready_only and state != "READY":
                    continue
                rows.append((name, str(v), state, "" if state == "READY" else st.reason))
        return rows

    # -- load / unload --------------------------------------------------------------------------------
    def check_control(self) -> None:
        if self.control_mode != "explicit":
            raise FailedPrecondition(
                f"explicit model load / unload is not allowed with --model-control-mode {self.control_mode}; "
                "start the server with --model-control-mode explicit"
            )

    async def _load_each(self, names, source: str = "") -> None:
        """Load every named model at start; a bad model must not keep the others from serving."""
        for name in names:
            try:
                await self.load(name)
            except Exception as exc:
                log.error("failed to load model '%s'%s: %s", name, source, exc)

    async def load(self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None) -> None:
        """Load (or reload) ``name`` from its repository folder, with ``config_json`` instead of its config.pbtxt
        when given; or, with ``files`` (Triton's ``file:`` overrides, ``config_json`` required), from those
        files alone, written to a private folder that serves until the next load or unload."""
        plain = not ("/" in name or "\\" in name or name.startswith(".") or "\x00" in name)
        if files:
            if not plain:
                raise InvalidArgument(f"failed to load '{name}': a model name cannot hold a path")
            model_dir = await asyncio.to_thread(write_override, name, files)
        else:
            model_dir = self.root / name
            if not plain or not model_dir.is_dir():
                raise NotFound(f"failed to load '{name}': no model directory '{name}' in repository {self.root}")
            contained(model_dir, self.root, "model folder")
        model = self.models.setdefault(name, ManagedModel(name))
        try:
            await self._load_from(model, model_dir, config_json, uploaded=bool(files))
        except BaseException:
            if files:
                remove_override(model_dir)
            raise
        # the serving set now comes from model_dir: an earlier override folder is no longer read
        previous = self._overrides.pop(name, None)
        if files:
            self._overrides[name] = model_dir
        if config_json:
            self._configs[name] = config_json
        else:
            self._configs.pop(name, None)
        if previous is not None and previous != model_dir:
            remove_override(previous)
        self._notify(name)

    async def _load_from(self, model: ManagedModel, model_dir: Path, config_json: str | None,
                         uploaded: bool = False) -> None:
        name = model.name
        async with model.lock:
            model.wanted = True
            signature = tree_signature(model_dir)
            try:
                text = None if config_json else read_config_text(model_dir)
                base = parse_config_json(config_json, name) if config_json else (
                    parse_config(text, str(model_dir / "config.pbtxt")) if text is not None else mc.ModelConfig())
                explicit_mbs = (json_mentions_max_batch_size(config_json) if config_json
                                else mentions_max_batch_size(text))
                filename = plain_file_name(base.default_model_filename or DEFAULT_MODEL_FILE,
                                           "default_model_filename")
                available = [v for v, d in version_dirs(model_dir).items() if (d / filename).exists()]
                wanted = select_versions(base, available)
                if not wanted:
                    raise ModelLoadError(
                        f"no version of model '{name}' to load: available versions with {filename}: "
                        f"{sorted(available) or 'none'}; version_policy {base.version_policy or 'latest 1'}".strip()
                    )
            except ModelLoadError as exc:
                model.reason = str(exc)
                raise
            if uploaded:  # the caller's files: their external data must be among them (overrides.py)
                try:
                    await asyncio.to_thread(check_external_data, name, model_dir,
                                            [model_dir / str(v) / filename for v in wanted])
                except InvalidArgument as exc:
                    model.reason = str(exc)
                    raise
            model.reason = ""
            if config_json:
                self.changed("config_override", name, None, json.loads(config_json))
            await self._install(model, base, explicit_mbs, {v: model_dir / str(v) for v in wanted}, signature)

    async def _install(self, model: ManagedModel, base: mc.ModelConfig, explicit_mbs: bool,
                       dirs: dict[int, Path], signature: object,
                       check: Callable[[ModelVersion, Path], None] | None = None) -> None:
        """Build every version in ``dirs`` (number -> local version directory), run ``check`` on each (on a
        worker thread: registry validation sets), then swap them in as the serving set in one assignment.
        Shared by local loads and registry sync; the caller holds ``model.lock``. On failure nothing changes
        for the versions already serving, and the reason is recorded per version."""
        name = model.name
        wanted = sorted(dirs)
        loop = asyncio.get_running_loop()
        for v in wanted:
            if v not in model.serving:
                model.status[v] = VersionStatus("LOADING")
        built: dict[int, ModelVersion] = {}
        model.loading = tuple(wanted)
        try:
            for v in wanted:
                started = time.perf_counter()
                mv = await loop.run_in_executor(
                    None, ModelVersion, name, v, dirs[v], base, explicit_mbs, self.default_max_batch_size)
                try:
                    for hook in self.version_hooks:
                        hook(mv)
                    if check is not None:
                        await loop.run_in_executor(None, check, mv, dirs[v])
                except Exception:
                    await loop.run_in_executor(None, mv.discard)
                    raise
                built[v] = mv
                self.load_seconds.observe(time.perf_counter() - started)
                self._count(name, "load")
        except Exception as exc:
            self._count(name, "load_failed")
            reason = str(exc)
            failed = next((v for v in wanted if v not in built), wanted[-1])
            for mv in built.values():
                await loop.run_in_executor(None, mv.discard)
            for v in wanted:
                if v not in model.serving:
                    model.status[v] = VersionStatus("UNAVAILABLE", reason if v == failed else "load aborted")
            if model.serving:
                reason += f" (previously loaded versions {sorted(model.serving)} keep serving)"
            model.reason = reason
            log.error("load of model '%s' failed: %s", name, reason)
            raise ModelLoadError(f"load failed for model '{name}': version {failed}: {reason}") from None
        old = model.serving
        model.serving = built  # the atomic swap
        self.changed("swap" if old else "load", name, sorted(old) or None, sorted(built))
        if old:
            self._count(name, "swap")
        model.loaded_signature = signature
        for v in wanted:
            model.status[v] = VersionStatus("READY")
        for v, mv in old.items():
            if v not in built:
                model.status[v] = VersionStatus("UNAVAILABLE", "unloaded")
            self._retire(mv)
        log.info("model '%s': serving versions %s", name, sorted(built))

    async def unload(self, name: str) -> None:
        model = self.models.get(name)
        if model is None or not model.serving:
            if name in self.model_names() or model is not None:
                return  # Triton answers success for an already unloaded model
            raise NotFound(f"failed to unload '{name}': no such model in repository {self.root}")
        await self._unload(name, "unloaded")
        remove_override(self._overrides.pop(name, None))
        self._configs.pop(name, None)

    def load_parameters(self, name: str) -> tuple[str | None, dict[str, bytes]]:
        """The ``config`` override and override files that what serves as ``name`` was loaded with (none for a
        plain load): what a restarted worker needs to serve the same."""
        folder = self._overrides.get(name)
        return self._configs.get(name), read_override(folder) if folder is not None else {}

    async def _unload(self, name: str, reason: str) -> None:
        model = self.models[name]
        async with model.lock:
            model.wanted = False
            old, model.serving = model.serving, {}
            model.loaded_signature = None
            for v, mv in old.items():
                model.status[v] = VersionStatus("UNAVAILABLE", reason)
                self._retire(mv)
            if old:
                self._count(name, "unload")
                self.changed("unload", name, sorted(old), None, reason=reason)
        self._notify(name)

    def changed(self, event: str, name: str, before: list[int] | None, after: list[int] | None,
                **details) -> None:
        """Tell the change observers (the audit log) what changed in the serving set."""
        for observer in self.change_observers:
            observer(event, name, before, after, **details)

    def _count(self, name: str, event: str) -> None:
        self.events[(name, event)] = self.events.get((name, event), 0) + 1

    def _retire(self, mv: ModelVersion) -> None:
        task = asyncio.create_task(mv.drain_and_close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _notify(self, name: str) -> None:
        ready = self.is_ready(name)
        for listener in self.listeners:
            listener(name, ready)

    # -- polling --------------------------------------------------------------------------------------
    async def poll_once(self) -> None:
        """Load new or changed models, unload removed ones. A model is (re)loaded only when its files
        are unchanged since the previous poll, so a version still being copied is never picked up."""
        present = set(self.model_names())
        for name in sorted(present):
            sig = await asyncio.get_running_loop().run_in_executor(None, tree_signature, self.root / name)
            stable = self._seen_signature.get(name) == sig
            self._seen_signature[name] = sig
            model = self.models.get(name)
            loaded_sig = model.loaded_signature if model else None
            if stable and sig != loaded_sig and self._failed_signature.get(name) != sig:
                try:
                    await self.load(name)
                    self._failed_signature.pop(name, None)
                except Exception as exc:
                    # Retried only once the files change again; the previous version keeps serving.
                    self._failed_signature[name] = sig
                    log.error("poll: failed to load model '%s': %s", name, exc)
        for name in list(self.models):
            if name not in present and self.models[name].serving:
                await self._unload(name, "removed from the model repository")
                self._seen_signature.pop(name, None)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

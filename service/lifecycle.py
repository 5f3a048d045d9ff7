"""Keeps a process's routing policies and loaded versions in step with every other process's.

Each model's policy lives in the policy store (service.routing.policy_store). A change, by the admin
API, by guarded rollout or by the repository watch, is one atomic update there; every process
hears of it (pub/sub, or a polled file), loads the versions the new policy needs, switches to
it, then unloads what it no longer needs. So promoting a version, or taking a canary out of
traffic, reaches every process at once, and a version is warm before it takes a request.

Guarded rollout: every process ships its per-route counts to the store a few times a second
and judges the canaries over the window that every process's counts make up; the first process
to see a threshold crossed sets the canary's weight to 0 (an atomic update that the others,
seeing the weight already 0, do not repeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from service import metrics
from service.monitor.feedback import QualityGauges
from service.monitor.profile import REFERENCE_FILE
from service.monitor.quality import QualityConfig
from service.pipeline.pipeline import Pipeline
from service.pipeline.served import Registry
from service.protocol.errors import Conflict, GatewayError, InvalidInput, NotFound, Unprocessable
from service.repository.config import CONFIG_FILE, MODEL_FILE, ConfigError, read_config
from service.repository.loader import Repository
from service.routing.config import (
    HISTORY,
    Change,
    ModelPolicy,
    Rollback,
    RoutingConfig,
    initial_policy,
    now_ms,
    read_routing_file,
)
from service.routing.policy_store import (
    Doc,
    PolicyStore,
    PolicyStoreUnavailable,
    open_policy_store,
)
from service.routing.rollout import (
    WINDOW_BUCKETS,
    Breach,
    SlotStats,
    breach,
    slot_stats,
    window_keys,
)
from service.settings import Settings
from service.validation import describe
from service.versions import is_version

log = logging.getLogger(__name__)
# Every change to a policy, as one JSON line: who, what, before and after.
changes_log = logging.getLogger("mlgate.changes")

# How often counts go to the store and canaries are judged.
ROLLOUT_TICK_S = 0.25
# How often a process that started without its policy store tries to join it.
JOIN_RETRY_S = 1.0

Stamp = tuple[int, ...]  # (mtime_ns, size) of a file; a version's, then its reference profile's
Scan = dict[str, dict[str, Stamp]]  # model -> {version or config.yaml: stamp}


class _Unchanged(Exception):
    """A change that finds the policy already as it wants it."""


class Lifecycle:
    """The admin API's operations, the policy store's listener, the rollout judge and the
    repository watch of one process."""

    def __init__(
        self, pipeline: Pipeline, repository: Repository, store: PolicyStore, watch_s: float
    ) -> None:
        self.registry = pipeline.registry
        self.router = pipeline.router
        # Where versions loaded at runtime come from.
        self.repository = repository
        self.store = store
        self._watch_s = watch_s
        # One reconciliation or change at a time: loading a version takes a while.
        self._lock = asyncio.Lock()
        # model -> when this process took up its current policy (ms since the epoch).
        self._applied_ms: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._quality_gauges = QualityGauges()

    @classmethod
    async def start(
        cls, pipeline: Pipeline, repository: Repository, settings: Settings
    ) -> Lifecycle:
        overrides = read_routing_file(settings.routing) if settings.routing is not None else {}
        unknown = sorted(set(overrides) - set(pipeline.registry.models))
        if unknown:
            raise ConfigError(f"{settings.routing}: no model {', '.join(unknown)} to route")
        store = open_policy_store(settings.shared_policy_store or "memory://")
        lifecycle = cls(pipeline, repository, store, settings.watch_models_s)
        initial: dict[str, ModelPolicy] = {}
        for model in pipeline.registry.models:
            loaded = pipeline.registry.loaded(model)
            initial[model] = pipeline.router.policy(model)
            section = overrides.get(model)
            if section is not None:
                initial[model] = initial_policy(
                    section, section.stable or initial[model].stable, loaded
                )
                missing = initial[model].routing.versions() - set(loaded)
                if missing:
                    raise ConfigError(
                        f"{settings.routing}: {model}: version {', '.join(sorted(missing))} "
                        f"is not a version; available: {', '.join(loaded)}"
                    )
        try:
            await lifecycle._join(initial)
        except PolicyStoreUnavailable:
            # Serve by config.yaml's policies meanwhile; the fleet's policy wins once it answers.
            log.warning("the policy store is unavailable: serving each model's configured policy")
            for model, policy in initial.items():
                pipeline.router.set(model, policy)
            lifecycle._tasks.append(asyncio.create_task(lifecycle._join_later(initial)))
        if settings.watch_models_s > 0:
            lifecycle._tasks.append(asyncio.create_task(lifecycle._watch()))
        return lifecycle

    async def _join(self, initial: dict[str, ModelPolicy]) -> None:
        """Take up the shared policy of every model (seeding it from `initial`), then listen for
        changes and judge rollouts."""
        for model, policy in initial.items():
            await self._seed(model, policy, "start")
        await self.store.start(self._heard)
        self._tasks.append(asyncio.create_task(self._rollout()))

    async def _join_later(self, initial: dict[str, ModelPolicy]) -> None:
        while True:
            await asyncio.sleep(JOIN_RETRY_S)
            try:
                await self._join(initial)
            except PolicyStoreUnavailable:
                continue
            log.info("joined the shared policy store")
            return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The last counts are worth a try, not a failed shutdown: the store may be gone too.
        with contextlib.suppress(Exception):
            await self._ship_counts()
        await self.store.close()

    # ---- views ---------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self.registry.models)

    def policy(self, model: str) -> ModelPolicy:
        try:
            return self.router.policy(model)
        except KeyError:
            raise NotFound(
                f"unknown model '{model}'; available: {', '.join(self.models())}"
            ) from None

    async def window(self, model: str) -> dict[str, SlotStats]:
        """Every process's counts of `model`'s routes over its rollout window."""
        keys = window_keys(model, self.router.window_s(model), time.time())
        return slot_stats(await self.store.read_counts(keys))

    async def describe(self, model: str) -> dict[str, Any]:
        policy = self.policy(model)
        window = await self.window(model)
        return {
            "model": model,
            # Which worker answered, and since when it holds this policy: with several
            # workers, each says how long a change took to reach it.
            "process": os.getpid(),
            "applied_at_ms": self._applied_ms.get(model),
            "loaded": self.registry.loaded(model),
            "policy": policy.model_dump(mode="json", exclude={"history"}),
            "window": {
                "seconds": self.router.window_s(model),
                "routes": {slot: stats.summary() for slot, stats in sorted(window.items())},
            },
            "history": [c.model_dump(mode="json") for c in policy.history],
        }

    # ---- routing changes -----------------------------------------------------------

    async def set_routing(
        self, model: str, who: str, section: dict[str, Any], merge: bool
    ) -> ModelPolicy:
        """Replace the routing section (or, with `merge`, the fields `section` names)."""
        current = self.policy(model).routing
        if merge:
            section = {**current.model_dump(exclude_none=True), **section}
        section.setdefault("stable", current.stable)
        try:
            routing = RoutingConfig.model_validate(section)
        except ValidationError as exc:
            raise InvalidInput(f"invalid routing: {describe(exc)}") from None

        def change(policy: ModelPolicy) -> None:
            _set_routing(policy, routing)

        policy, _ = await self._change(model, who, "set_routing", change)
        return policy

    async def promote(self, model: str, who: str, version: str | None) -> ModelPolicy:
        """Make `version` (default: the canary's) the stable version, in one change."""

        def change(policy: ModelPolicy) -> None:
            routing = policy.routing
            target = version or (routing.canary.version if routing.canary else None)
            if target is None:
                raise InvalidInput("no canary to promote; name the version to promote")
            if target == routing.stable:
                raise _Unchanged
            section = routing.model_dump(exclude_none=True)
            section.update(stable=target, canary=None)
            section["shadow"] = [s for s in section.get("shadow", []) if s["version"] != target]
            _set_routing(policy, RoutingConfig.model_validate(section))

        policy, _ = await self._change(model, who, "promote", change)
        return policy

    async def rollback(self, model: str, who: str, detail: str) -> ModelPolicy:
        """Take the canary out of traffic by hand."""
        off = _canary_off(Breach("manual", detail), None)
        policy, _ = await self._change(model, who, "rollback", off, detail=detail)
        return policy

    # ---- versions ------------------------------------------------------------------

    async def load(self, model: str, version: str, who: str) -> ModelPolicy:
        """Load `version` here, warmed up, then ask every process to keep it loaded."""
        self.policy(model)
        async with self._lock:
            generation = self.policy(model).versions.get(version, 0)
            if version not in self.registry.loaded(model):
                await self._open(model, version, "load", generation)
            self.registry.get(model, version).generation = generation

            def change(policy: ModelPolicy) -> None:
                if version in policy.versions:
                    raise _Unchanged
                policy.versions[version] = 0

            policy, _ = await self._change_locked(model, who, "load", change)
            return policy

    async def reload(self, model: str, version: str, who: str) -> ModelPolicy:
        """Reload `version` from disk everywhere; each process drains the copy it replaces."""
        self.policy(model)
        async with self._lock:
            if version not in self.registry.loaded(model):
                raise NotFound(f"model '{model}' has no version '{version}' loaded")
            generation = self.policy(model).versions.get(version, 0) + 1
            await self._open(model, version, "reload", generation)

            def change(policy: ModelPolicy) -> None:
                policy.versions[version] = generation

            policy, _ = await self._change_locked(model, who, "reload", change)
            return policy

    async def unload(self, model: str, version: str, who: str) -> ModelPolicy:
        """Unload `version` everywhere, once its requests in flight are answered."""

        def change(policy: ModelPolicy) -> None:
            if version in _referenced(policy, self.registry, model):
                raise Conflict(
                    f"version '{version}' is in the routing policy or is the fallback version; "
                    "take it out of the policy first"
                )
            if version not in policy.versions:
                raise _Unchanged
            del policy.versions[version]

        if version not in self.policy(model).versions and version not in self.registry.loaded(
            model
        ):
            raise NotFound(f"model '{model}' has no version '{version}' loaded")
        policy, _ = await self._change(model, who, "unload", change)
        return policy

    # ---- the shared policy ---------------------------------------------------------

    async def _seed(self, model: str, initial: ModelPolicy, who: str) -> None:
        """Adopt the stored policy grown from this config.yaml, or store config.yaml's own."""

        def seed(doc: Doc | None) -> Doc | None:
            if doc is not None and doc.get("source") == initial.source:
                return None
            seeded = initial.model_copy(deep=True)
            entry = Change(at_ms=now_ms(), who=who, what="config", after=_view(seeded))
            if doc is not None:
                old = ModelPolicy.model_validate(doc)
                # Revisions only grow, so a process that held the old policy takes this one.
                seeded.revision = old.revision + 1
                entry.before = _view(old)
                seeded.history = old.history
            seeded.history = [*seeded.history, entry][-HISTORY:]
            return seeded.model_dump(mode="json")

        stored = await self.store.update(model, seed)
        assert stored is not None
        async with self._lock:
            await self._apply(model, ModelPolicy.model_validate(stored), force=True)

    async def _heard(self, model: str | None) -> None:
        """The store says `model`'s policy (None: any) changed; take it up."""
        for name in self.models() if model is None else [model]:
            if name not in self.registry.models:
                continue  # a model this process does not serve
            try:
                doc = await self.store.read(name)
                if doc is None:
                    continue
                policy = ModelPolicy.model_validate(doc)
                async with self._lock:
                    await self._apply(name, policy)
            except Exception:
                log.exception("could not take up the routing policy of %s", name)

    async def _change(
        self,
        model: str,
        who: str,
        what: str,
        mutate: Callable[[ModelPolicy], None],
        detail: str | None = None,
    ) -> tuple[ModelPolicy, Change | None]:
        self.policy(model)
        async with self._lock:
            return await self._change_locked(model, who, what, mutate, detail)

    async def _change_locked(
        self,
        model: str,
        who: str,
        what: str,
        mutate: Callable[[ModelPolicy], None],
        detail: str | None = None,
    ) -> tuple[ModelPolicy, Change | None]:
        """One atomic change of the stored policy, logged with who made it and what it was;
        the policy now stored, and the change unless `mutate` found nothing to change."""
        made: list[Change] = []

        def change(doc: Doc | None) -> Doc | None:
            current = ModelPolicy.model_validate(doc) if doc is not None else self.policy(model)
            updated = current.model_copy(deep=True)
            try:
                mutate(updated)
            except _Unchanged:
                return None
            missing = updated.routing.versions() - set(updated.versions)
            if missing:
                raise Conflict(
                    f"version {', '.join(sorted(missing, key=int))} is not loaded; load it first"
                )
            updated.revision = current.revision + 1
            entry = Change(
                at_ms=now_ms(),
                who=who,
                what=what,
                detail=detail,
                before=_view(current),
                after=_view(updated),
            )
            updated.history = [*current.history, entry][-HISTORY:]
            made.append(entry)
            return updated.model_dump(mode="json")

        stored = await self.store.update(model, change)
        assert stored is not None
        policy = ModelPolicy.model_validate(stored)
        await self._apply(model, policy)
        for entry in made:
            metrics.POLICY_CHANGES.labels(model, what).inc()
            changes_log.info(json.dumps({"model": model, **entry.model_dump(mode="json")}))
        return policy, made[0] if made else None

    async def _apply(self, model: str, policy: ModelPolicy, force: bool = False) -> None:
        """Switch this process to `policy`: load what it needs first, unload what it dropped
        after. The lock is held."""
        current = self.router.policy(model)
        if not force and policy.revision <= current.revision:
            return
        wanted = {**dict.fromkeys(_referenced(policy, self.registry, model), 0), **policy.versions}
        for version, generation in sorted(wanted.items()):
            held = self.registry.find(model, version)
            if held is None or held.generation < generation:
                with contextlib.suppress(GatewayError):
                    await self._open(
                        model, version, "load" if held is None else "reload", generation
                    )
        self.router.set(model, policy)
        self._applied_ms[model] = now_ms()
        for version in self.registry.loaded(model):
            if version not in wanted:
                await self.registry.uninstall(model, version)
                metrics.MODEL_LIFECYCLE.labels(model, version, "unload", "ok").inc()
                log.info("unloaded %s version %s", model, version)

    async def _open(
        self, model: str, version: str, action: str, generation: int | None = None
    ) -> None:
        """Open, warm up and swap in `version` as of reload `generation` (None: the one it has);
        Unprocessable says why it cannot serve. The lock is held."""
        if generation is None:
            held = self.registry.find(model, version)
            generation = 0 if held is None else held.generation
        try:
            mv = await self.repository.open_version(model, version)
        except ConfigError as exc:
            metrics.MODEL_LIFECYCLE.labels(model, version, action, "failed").inc()
            log.error("could not %s %s version %s:\n%s", action, model, version, exc)
            # The answer names files relative to the repository: no server path in a body.
            reason = str(exc)
            if self.repository.root is not None:
                reason = reason.replace(f"{self.repository.root}{os.sep}", "")
            raise Unprocessable(f"cannot {action} version '{version}': {reason}") from None
        await self.registry.install(mv, generation)
        metrics.MODEL_LIFECYCLE.labels(model, version, action, "ok").inc()
        log.info("%sed %s version %s", action.removesuffix("e"), model, version)

    # ---- guarded rollout -----------------------------------------------------------

    async def _rollout(self) -> None:
        failing = False  # one log line per run of failed rounds, not four a second
        while True:
            await asyncio.sleep(ROLLOUT_TICK_S)
            try:
                await self._ship_counts()
                for model, policy in self.router.policies().items():
                    quality = self._quality(model)
                    if _judged(policy):
                        found = breach(policy, await self.window(model), quality)
                        if found is not None:
                            await self._roll_back(model, policy, found)
                    if quality is not None:
                        await self._publish_quality(model, quality)
            except Exception:
                if not failing:
                    log.exception("guarded rollout: rounds fail until the policy store answers")
                failing = True
            else:
                if failing:
                    log.info("guarded rollout: rounds succeed again")
                failing = False

    def _quality(self, model: str) -> QualityConfig | None:
        return self.registry.model(model).config.quality

    async def _publish_quality(self, model: str, quality: QualityConfig) -> None:
        keys = window_keys(model, quality.window_s, time.time())
        window = slot_stats(await self.store.read_counts(keys))
        self._quality_gauges.publish(model, quality.metric, window)

    async def _ship_counts(self) -> None:
        pending = self.router.tally.take()
        if pending:
            longest = max(
                max(self.router.window_s(m), q.window_s if (q := self._quality(m)) else 0.0)
                for m in self.models()
            )
            await self.store.add_counts(pending, longest * (1 + 2 / WINDOW_BUCKETS))

    async def _roll_back(self, model: str, judged: ModelPolicy, found: Breach) -> None:
        canary = judged.routing.canary
        assert canary is not None
        off = _canary_off(found, judged.canary_since_ms)
        _, made = await self._change(
            model, "guarded-rollout", "auto_rollback", off, detail=found.detail
        )
        # Every process may judge the same window; only the one whose change landed counts it.
        if made is not None:
            metrics.ROLLBACKS.labels(model, canary.version, found.reason).inc()
            log.warning(
                "%s: canary version %s rolled back: %s", model, canary.version, found.detail
            )

    # ---- repository watch ----------------------------------------------------------

    async def _watch(self) -> None:
        """Poll the repository; act on a difference once it has held still for a poll, so a
        model file still being copied is never loaded."""
        acted = previous = await asyncio.to_thread(self._scan)
        while True:
            await asyncio.sleep(self._watch_s)
            try:
                scan = await asyncio.to_thread(self._scan)
                if scan == previous and scan != acted:
                    await self._act_on(acted, scan)
                    acted = scan
                previous = scan
            except Exception:
                log.exception("repository watch: this round failed")

    def _scan(self) -> Scan:
        root = self.repository.root
        scan: Scan = {}
        if root is None:
            return scan
        for model in self.models():
            stamps: dict[str, Stamp] = {}
            directory = root / model
            for path in [directory / CONFIG_FILE, *directory.glob(f"*/{MODEL_FILE}")]:
                name = path.parent.name if path.name == MODEL_FILE else CONFIG_FILE
                if name == CONFIG_FILE or is_version(name):
                    with contextlib.suppress(FileNotFoundError):
                        st = path.stat()
                        stamps[name] = (st.st_mtime_ns, st.st_size)
                        # A new drift reference reloads its version, as a new model file does.
                        reference = path.parent / REFERENCE_FILE
                        if name != CONFIG_FILE and reference.is_file():
                            ref = reference.stat()
                            stamps[name] += (ref.st_mtime_ns, ref.st_size)
            scan[model] = stamps
        return scan

    async def _act_on(self, before: Scan, after: Scan) -> None:
        for model, now in after.items():
            was = before.get(model, {})
            if now.get(CONFIG_FILE) != was.get(CONFIG_FILE):
                await self._config_changed(model)
                continue
            for version in sorted(set(now) | set(was)):
                if version == CONFIG_FILE or now.get(version) == was.get(version):
                    continue
                try:
                    if version not in was:
                        await self.load(model, version, "repository-watch")
                    elif version not in now:
                        await self.unload(model, version, "repository-watch")
                    elif version in self.registry.loaded(model):
                        # Every process sees the new file: each reloads its own copy.
                        async with self._lock:
                            await self._open(model, version, "reload")
                except GatewayError as exc:
                    log.warning("repository watch: %s version %s: %s", model, version, exc.message)

    async def _config_changed(self, model: str) -> None:
        """A new config.yaml: every loaded version is reloaded with it, and a changed routing
        section replaces the policy."""
        root = self.repository.root
        assert root is not None
        try:
            config = read_config(root / model / CONFIG_FILE)
        except ConfigError as exc:
            log.error("repository watch: %s", exc)
            return
        async with self._lock:
            for version in self.registry.loaded(model):
                with contextlib.suppress(GatewayError):
                    await self._open(model, version, "reload")
        current = self.policy(model)
        stable = (config.routing and config.routing.stable) or config.default_version
        initial = initial_policy(config.routing, stable or current.stable, current.versions)
        if initial.source != current.source:
            await self._seed(model, initial, "repository-watch")


def _judged(policy: ModelPolicy) -> bool:
    canary = policy.routing.canary
    return policy.routing.rollback is not None and canary is not None and canary.weight > 0


def _canary_off(found: Breach, since_ms: int | None) -> Callable[[ModelPolicy], None]:
    """A change that sets the canary's weight to 0 and records why; with `since_ms`, only the
    canary judged (not one re-enabled since)."""

    def change(policy: ModelPolicy) -> None:
        canary = policy.routing.canary
        if canary is None or canary.weight == 0:
            raise _Unchanged
        if since_ms is not None and policy.canary_since_ms != since_ms:
            raise _Unchanged
        policy.routing = policy.routing.model_copy(
            update={"canary": canary.model_copy(update={"weight": 0.0})}
        )
        policy.rollback = Rollback(
            at_ms=now_ms(), version=canary.version, reason=found.reason, detail=found.detail
        )

    return change


def _set_routing(policy: ModelPolicy, routing: RoutingConfig) -> None:
    old = policy.routing.canary
    new = routing.canary
    if (
        new is not None
        and new.weight > 0
        and (old is None or old.weight == 0 or old.version != new.version)
    ):
        # A canary back in traffic starts a clean window: its old failures are not its new ones.
        policy.canary_since_ms = now_ms()
    policy.routing = routing


def _referenced(policy: ModelPolicy, registry: Registry, model: str) -> set[str]:
    named = policy.routing.versions()
    fallback = registry.model(model).config.guard.fallback
    if fallback is not None and fallback.version is not None:
        named.add(fallback.version)
    return named


def _view(policy: ModelPolicy) -> dict[str, Any]:
    """What a change's before and after show."""
    return {
        "routing": policy.routing.model_dump(mode="json", exclude_none=True),
        "versions": policy.versions,
    }

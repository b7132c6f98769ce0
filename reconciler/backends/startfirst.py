"""The start-first sequence, for backends that run a deployment as separate replicas.

Docker has no notion of a deployment: the reconciler replaces its containers itself. This is
that sequence, written once over a few primitives (resolve an image, start one replica, probe
one, read its last lines, remove some), so that the Docker backend and the in-memory fake
share it and the fake's tests exercise the real thing:

    remove what does not serve → (retire first, if asked) → resolve the image → start the
    missing replicas → wait until each is ready → hand back the old ones still serving

The core records the deployment RUNNING before it retires those (`Backend.stop`), so that the
routing table has moved to the new replicas first. An engine with rolling updates of its own
(Swarm) implements `Backend.converge` directly instead.
"""

from __future__ import annotations

import os
import threading
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence

from ..manifests.spec import ContainerSpec, Identity
from .base import (
    LAST_LINES,
    Backend,
    Converged,
    ConvergeFailed,
    Intent,
    Interrupted,
    Replica,
)


class StartFirstBackend(Backend):
    # -- the primitives ---------------------------------------------------------------------

    @abstractmethod
    def _resolve_image(self, ref: str) -> str:
        """The image's id, fetched onto the host if it is not there. Raises ConvergeFailed."""

    @abstractmethod
    def _start(
        self,
        intent: Intent,
        identity: Identity,
        image_id: str,
        replica: int,
        gpu_ids: tuple[str, ...],
    ) -> str:
        """Create and start one replica; its id. Raises ConvergeFailed, leaving nothing."""

    @abstractmethod
    def _probe(self, spec: ContainerSpec, replica_id: str) -> tuple[bool, str]:
        """(ready, what was seen). Raises ConvergeFailed when it will never be ready (it
        exited, was killed, keeps restarting, is gone)."""

    @abstractmethod
    def _last_lines(self, replica_id: str, count: int = LAST_LINES) -> tuple[str, ...]:
        """The last non-blank lines it wrote (none when they cannot be read)."""

    @abstractmethod
    def _remove(self, replica_ids: Iterable[str]) -> None:
        """Remove replicas at once; gone already is fine."""

    # The readiness wait's clock: the fake replaces both, so that a startup timeout of minutes
    # passes at once.
    def _clock(self) -> float:
        return time.monotonic()

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- the sequence -----------------------------------------------------------------------

    def converge(self, intent: Intent, stop: threading.Event) -> Converged:
        spec = intent.deployment.spec
        self.delete(intent.remove_first)
        if intent.stop_first:
            self.stop(intent.retire, spec.stop_timeout)
        retire = () if intent.stop_first else intent.retire
        if not intent.create:  # an update in place: what serves stays
            return Converged(intent.config_hash, None, retire)
        image_id = intent.image_id or self._resolve_image(spec.image)
        identity = spec.identity(image_id, intent.hashing)  # differs if pulled just now
        created = self._start_all(intent, identity, image_id)
        try:
            self._wait_ready(spec, created, stop)
        except ConvergeFailed:
            self._remove(created)
            raise
        return Converged(identity.config_hash, image_id, retire)

    def wait_ready(
        self, spec: ContainerSpec, replicas: Sequence[Replica], stop: threading.Event
    ) -> None:
        self._wait_ready(spec, [c.id for c in replicas], stop)

    def delete(self, replicas: Iterable[Replica]) -> None:
        self._remove(c.id for c in replicas)

    def last_lines(self, replica: Replica, count: int = LAST_LINES) -> tuple[str, ...]:
        return self._last_lines(replica.id, count)

    def _start_all(self, intent: Intent, identity: Identity, image_id: str) -> list[str]:
        spec = intent.deployment.spec
        if spec.model_path and not os.path.exists(spec.model_path):
            raise ConvergeFailed(
                f"model artifact {spec.model_uri} not found on this host ({spec.model_path})"
            )
        created: list[str] = []
        try:
            for n, replica in enumerate(intent.create):
                gpus = intent.gpus[n * spec.gpus : (n + 1) * spec.gpus] if intent.gpus else ()
                created.append(self._start(intent, identity, image_id, replica, gpus))
        except ConvergeFailed:
            self._remove(created)
            raise
        return created

    def _wait_ready(
        self, spec: ContainerSpec, replica_ids: list[str], stop: threading.Event
    ) -> None:
        deadline = self._clock() + spec.startup_timeout
        waiting = list(replica_ids)
        pause = 0.05
        detail = "not checked yet"
        while waiting:
            for rid in list(waiting):
                ready, detail = self._probe(spec, rid)
                if ready:
                    waiting.remove(rid)
            if not waiting:
                return
            if stop.is_set():
                raise Interrupted
            if self._clock() >= deadline:
                raise ConvergeFailed(
                    f"not ready after {spec.startup_timeout}s: {detail}",
                    self._last_lines(waiting[0]),
                )
            self._sleep(pause)
            pause = min(pause * 1.5, 0.5)

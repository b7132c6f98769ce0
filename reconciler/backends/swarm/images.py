"""Images onto the nodes of a Swarm, with no registry on the internet.

A Swarm node that is handed an image *tag* asks a registry for it first (about 20 s of waiting
on a host without one, then a failed task). So a service names its image by id: the id is the
image's content, the same on every node that has it, and resolves nowhere. The image comes from
the local engine (where `make images` and `docker build` put it; pulled there when missing, as
compose does) and is copied with `docker save | docker load` to every node in
`Settings.spec.engine.nodes` that lacks it: once per image and node, checked with one inspect.

Without `nodes`, the nodes get images from a registry of their own: the service then names the
image by its registry digest (`repo@sha256:…`), which a node pulls without resolving a tag.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..base import ConvergeFailed, EngineError, EngineUnreachable, NotFound
from ..docker.engine import Engine

# Copying an image of several GB to a node takes minutes; an API call otherwise seconds.
LOAD_TIMEOUT = 1800.0


class ImageCourier:
    def __init__(self, source: Engine, manager: Engine, nodes: Sequence[str]) -> None:
        self.source = source
        self.manager = manager
        self.node_hosts = tuple(nodes)
        self._nodes: dict[str, Engine] = {}
        self._present: set[tuple[str, str]] = set()  # (node host, image id) seen there
        self._lock = threading.Lock()  # one copy at a time: they share the disk and the link

    def resolve(self, ref: str) -> str:
        """The image's id on the local engine (pulled there if missing); the manager's, if
        only the manager has it."""
        try:
            return self.source.ensure_image(ref)
        except (EngineError, EngineUnreachable) as exc:
            on_manager = self._id_on(self.manager, ref)
            if on_manager:
                return on_manager
            raise ConvergeFailed(str(exc)) from None

    def deliver(self, ref: str, image_id: str) -> str:
        """How services name the image, once every listed node has it."""
        if not self.node_hosts:
            return self._registry_name(ref, image_id)
        with self._lock:
            missing = [h for h in self.node_hosts if not self._has(h, image_id)]
            if missing:
                self._copy(ref, image_id, missing)
        return image_id

    def _registry_name(self, ref: str, image_id: str) -> str:
        if self._id_on(self.manager, image_id):
            return image_id  # a one-node Swarm, or images loaded by hand
        try:
            info = self.source.call(self.source.sdk.inspect_image, image_id)
        except (EngineError, NotFound):
            return ref
        digests = info.get("RepoDigests") or []
        return digests[0] if digests else ref

    def _node(self, host: str) -> Engine:
        if host not in self._nodes:
            self._nodes[host] = Engine.connect(LOAD_TIMEOUT, host)
        return self._nodes[host]

    @staticmethod
    def _id_on(engine: Engine, ref: str) -> str | None:
        try:
            return engine.image_id(ref)
        except (EngineError, EngineUnreachable):
            return None

    def _has(self, host: str, image_id: str) -> bool:
        if (host, image_id) in self._present:
            return True
        try:
            found = self._node(host).image_id(image_id) == image_id
        except EngineUnreachable as exc:
            raise ConvergeFailed(f"node engine {host} does not answer: {exc}") from None
        if found:
            self._present.add((host, image_id))
        return found

    def _copy(self, ref: str, image_id: str, hosts: list[str]) -> None:
        """`docker save` once into a temporary file, `docker load` on the nodes in parallel."""
        with tempfile.TemporaryDirectory(prefix="reconciler-image-") as folder:
            path = os.path.join(folder, "image.tar")
            try:
                with open(path, "wb") as out:
                    for chunk in self.source.call(self.source.sdk.get_image, ref):
                        out.write(chunk)
            except (EngineError, NotFound, EngineUnreachable) as exc:
                raise ConvergeFailed(
                    f"could not save image {ref} from the local engine: {exc}"
                ) from None
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                errors = [e for e in pool.map(lambda h: self._load(h, path, image_id), hosts) if e]
        if errors:
            raise ConvergeFailed(f"image {ref} could not be copied: {'; '.join(errors)}")

    def _load(self, host: str, path: str, image_id: str) -> str | None:
        engine = self._node(host)
        try:
            with open(path, "rb") as data:
                for _ in engine.call(engine.sdk.load_image, data):
                    pass  # the load ends when its progress stream does
        except (EngineError, NotFound, EngineUnreachable) as exc:
            return f"docker load on {host}: {exc}"
        if not self._has(host, image_id):
            return f"docker load on {host} did not leave image {image_id[:19]}"
        return None

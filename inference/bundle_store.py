"""The policy bundle a node enforces: verified, activated, kept on disk, reported.

A bundle reaches the node two ways, both ending in `BundleStore.offer`: the console pushes it
(`POST /outpost/bundle`, inference/server.py) as soon as it is published, and the node pulls
it (`GET /api/v1/nodes/bundle` with `If-None-Match`, inference/agent.py) whenever a heartbeat
answer names a newer revision. Either way the bundle is activated only when
`protocol.verify_bundle` accepts it: signed by a console key this node trusts, unaltered, not
expired, and not older than the revision it enforces. A refused bundle changes nothing — the
node keeps serving on its last good one — and the reason is reported on the next heartbeat.

The active bundle is written to `STATE_DIR/bundle.json` (atomically) and read back at start,
verified again, so a restarted node enforces what it enforced before it stopped, even with
its console out of reach.

Key rotation: a bundle lists the console keys to trust next (`trusted_keys`); activating it
adds them, so the console can sign with a new key once every node holds a bundle that
announced it. The keys are shared with the TokenVerifier, as is the list of revoked tokens.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from inference import protocol
from inference.policy import PolicyView
from inference.protocol import BundleError, PolicyBundle, SignedBundle

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"


class BundleStore:
    """The active bundle and its index for the hot path (`view`); None until one is active.

    Runs on the event loop (pushes, pulls and requests alike), so it needs no lock: `view` is
    replaced in one assignment and a request reads it once.
    """

    def __init__(
        self,
        state_dir: Path | None,
        *,
        keys: dict[str, Ed25519PublicKey] | None = None,
        on_activate: list[Callable[[PolicyBundle], None]] | None = None,
        clock: Callable[[], float] = time.time,
        hold: bool = False,
    ) -> None:
        self.state_dir = state_dir
        # --hold-bundle: keep enforcing the bundle this node has (an incident freeze); newer
        # ones are refused, and the console's compliance checks report the node stale.
        self.hold = hold
        # Shared with the TokenVerifier when there is one, so both trust the same keys.
        self.keys: dict[str, Ed25519PublicKey] = keys if keys is not None else {}
        self.on_activate = on_activate or []
        self.clock = clock
        self.signed: SignedBundle | None = None
        self.view: PolicyView | None = None
        # Why the last bundle offered was refused, until a newer one is activated.
        self.problem: str | None = None
        # When the console last said this is its newest revision (wall clock, seconds).
        self._confirmed_at = 0.0
        self._issued_at = 0.0
        self._expires_at = 0.0

    @property
    def revision(self) -> int | None:
        return self.signed.bundle.revision if self.signed is not None else None

    @property
    def etag(self) -> str | None:
        """The entity tag the console gives this revision (fleet/api.py, bundle fetch)."""
        return None if self.signed is None else f'"{self.signed.bundle.revision}"'

    def trust(self, key: Ed25519PublicKey) -> str:
        kid = protocol.key_id(key)
        self.keys[kid] = key
        return kid

    # --- activation ------------------------------------------------------------------------

    def offer(self, signed: SignedBundle, *, persist: bool = True) -> bool:
        """Activate `signed` if it may be: True when it became the active bundle, False when
        it is the revision already active. Raises BundleError saying why it is refused."""
        now = self.clock()
        if self.signed is not None and signed.bundle.revision == self.signed.bundle.revision:
            if signed == self.signed:
                self._confirmed_at = now
                return False
            # Same number, other content: a console that lost its history, or a forgery.
            raise self._refused(
                f"bundle {signed.bundle.revision} differs from the bundle {self.revision} this "
                "node enforces; a revision is never replaced by another of the same number"
            )
        if self.hold and self.signed is not None:
            raise self._refused(self.held_message(signed.bundle.revision))
        try:
            bundle = protocol.verify_bundle(
                signed,
                self.keys,
                now=datetime.fromtimestamp(now, UTC),
                current_revision=self.revision,
            )
        except BundleError as exc:
            raise self._refused(str(exc)) from None
        if persist and self.state_dir is not None:
            _write_atomically(self.state_dir / BUNDLE_FILE, signed.model_dump_json().encode())
        self._activate(signed, bundle, now)
        return True

    def held_message(self, revision: int) -> str:
        return (
            f"held at revision {self.revision} (started with --hold-bundle): revision "
            f"{revision} is not taken"
        )

    def _refused(self, message: str) -> BundleError:
        self.problem = message[:500]
        log.warning("refused a policy bundle: %s", message)
        return BundleError(message)

    def _activate(self, signed: SignedBundle, bundle: PolicyBundle, now: float) -> None:
        for encoded in bundle.trusted_keys:
            try:
                self.trust(protocol.public_key_from_b64(encoded))
            except ValueError:
                log.warning("bundle %d lists an unusable trusted key; ignored", bundle.revision)
        view = PolicyView(bundle)
        self.signed = signed
        self.view = view
        self.problem = None
        self._issued_at = bundle.issued_at.timestamp()
        self._expires_at = bundle.expires_at.timestamp()
        self._confirmed_at = now
        for hook in self.on_activate:
            hook(bundle)
        log.info(
            "enforcing policy bundle %d (%d tenants, issued %s)",
            bundle.revision,
            len(bundle.tenants),
            bundle.issued_at.isoformat(),
        )

    def load(self) -> bool:
        """Activate the bundle saved by a previous run, if there is one and it still verifies;
        True when one was activated. A saved bundle that no longer does (expired, or signed
        by a key not trusted any more) is reported and left on disk for inspection."""
        if self.state_dir is None:
            return False
        path = self.state_dir / BUNDLE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.problem = f"cannot read {path}: {exc}"
            log.warning(self.problem)
            return False
        try:
            signed = SignedBundle.model_validate_json(raw)
        except ValidationError as exc:
            self.problem = f"{path} is not a signed bundle ({exc.error_count()} problem(s))"
            log.warning(self.problem)
            return False
        try:
            self.offer(signed, persist=False)
        except BundleError:
            return False
        # Not confirmed by the console yet: its age counts from when it was issued.
        self._confirmed_at = 0.0
        return True

    # --- freshness ---------------------------------------------------------------------------

    def confirm(self, revision: int | None) -> None:
        """A heartbeat answer named the console's newest revision: when it is the one
        enforced here, the bundle is known to be current as of now."""
        if revision is not None and revision == self.revision:
            self._confirmed_at = self.clock()

    def age_s(self, now: float | None = None) -> float:
        """Seconds since this bundle was last known to be current: issued, or confirmed by
        the console. A tenant who fails closed is refused once this passes its limit."""
        now = self.clock() if now is None else now
        return max(0.0, now - max(self._issued_at, self._confirmed_at))

    def expired(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return self.signed is not None and now >= self._expires_at


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

"""What the server holds for each browser session, within one memory budget for all of them.

Every page session (``gr.Request.session_hash``) owns its own entries: the encoded image it shows
and, to make switching back cheap, the one before. No other session can evict them. All entries
together stay within ``max_bytes``; when a new image would not fit, the store frees, in order, the
earlier images of any session and then the sessions idle for longer than ``idle_s``. If that is not
enough the new image is refused with ``ServerFullError`` (a clear message; nothing else is lost).
Two sessions that load the same image share one entry.

A session also records which settings its page shows (``viewed``) and which its answers were
computed for (``answered``), so the page can tell when answers have gone stale, and the
cancellation event of its running generation, so a closed tab, a Stop click or a newer request
stops the work instead of letting it delay the next user. ``release`` (the page's unload event)
frees everything a session held, its export files included.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ANSWER_RECORDS",
    "DEFAULT_IDLE_S",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SESSION",
    "AnswerCancelled",
    "ServerFullError",
    "Session",
    "SessionStore",
    "tensor_bytes",
]

DEFAULT_MAX_BYTES = 2 * 2**30  # all sessions' encodings together: ~250 LLaVA-1.5-7B images in float16
DEFAULT_IDLE_S = 30 * 60.0  # a session untouched this long may be freed when memory is needed
IMAGES_PER_SESSION = 2  # the image on the page and the one before
RELEASED_REMEMBERED = 10_000  # ended session ids remembered, so late work cannot bring one back
DEFAULT_SESSION = "local"  # the session of library callers that do not name one
# Records that belong to the page's answers, forgotten with them: the answers, and what the in-LLM
# methods kept while answering (``app.inllm_views``).
ANSWER_RECORDS = ("answers", "in-llm")


class ServerFullError(RuntimeError):
    """No room for another image without evicting an active session's current image."""


class AnswerCancelled(RuntimeError):
    """The generation was stopped (Stop, a newer request, the settings changed or the tab closed)."""


def tensor_bytes(*objects: Any) -> int:
    """Bytes held by the tensors among ``objects`` (storage shared between views counted once)."""
    seen: set[int] = set()
    total = 0
    for obj in objects:
        storage = getattr(obj, "untyped_storage", None)
        if storage is None:
            continue
        s = storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


@dataclass
class Session:
    """One page session's state on the server. Mutated only under the store's lock."""

    id: str
    keys: list[str] = field(default_factory=list)  # oldest first; the last is the current image
    last_seen: float = 0.0
    viewed: Hashable | None = None  # settings the page shows now
    answered: Hashable | None = None  # settings the shown answers were computed for
    running: threading.Event | None = None  # set to cancel the generation in flight
    running_for: Hashable | None = None
    viewed_at_start: Hashable | None = None  # what the page showed when the running answer began
    export_dir: Path | None = None
    records: dict[str, dict] = field(default_factory=dict)  # "view" and "answers": what export writes

    @property
    def current(self) -> str | None:
        return self.keys[-1] if self.keys else None


@dataclass
class _Held:
    value: Any
    nbytes: int
    sessions: set[str] = field(default_factory=set)


class SessionStore:
    """Per-session entries under one byte budget; thread-safe."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        if not idle_s > 0:
            raise ValueError(f"idle_s must be positive, got {idle_s!r}")
        self.max_bytes = max_bytes
        self.idle_s = float(idle_s)
        self._clock = clock
        self._held: OrderedDict[str, _Held] = OrderedDict()  # least recently used first
        self._sessions: dict[str, Session] = {}
        self._released: OrderedDict[str, None] = OrderedDict()  # ended sessions, never made again
        self._lock = threading.RLock()
        self._export_root: Path | None = None  # made on first export; removed with the store or at exit

    # -- entries -----------------------------------------------------------------------------------

    def find(self, session: str, key: str) -> Any | None:
        """The entry ``key`` if held for any session; it becomes ``session``'s current image."""
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return None
            self._attach(self._session(session), key, held)
            return held.value

    def put(self, session: str, key: str, value: Any, nbytes: int) -> Any:
        """Hold ``value`` as ``session``'s current image; returns the entry actually held.

        Raises:
            ServerFullError: it does not fit without evicting another session's current image.
        """
        with self._lock:
            s = self._session(session)
            if key in self._held:  # another request made it meanwhile
                held = self._held[key]
                self._attach(s, key, held)
                return held.value
            self._make_room(nbytes, s)
            held = _Held(value, int(nbytes))
            self._held[key] = held
            self._attach(s, key, held)
            return value

    def get(self, session: str, key: str) -> Any | None:
        """``session``'s entry ``key``, or None when this session does not hold it."""
        with self._lock:
            s = self._sessions.get(session)
            held = self._held.get(key)
            if s is None or held is None or key not in s.keys:
                return None
            s.last_seen = self._clock()
            self._held.move_to_end(key)
            return held.value

    def _session(self, session: str) -> Session:
        if not isinstance(session, str) or not session:
            raise ValueError(f"session must be a non-empty string, got {session!r}")
        s = self._sessions.get(session)
        now = self._clock()
        if s is None and session in self._released:
            raise ValueError("this page session has ended: reload the page")
        if s is None:
            for old in [o for o in self._sessions.values() if not o.keys and o.running is None]:
                if now - old.last_seen > self.idle_s:
                    self.release(old.id)
            s = self._sessions[session] = Session(session)
        s.last_seen = now
        return s

    def _attach(self, s: Session, key: str, held: _Held) -> None:
        if key in s.keys:
            s.keys.remove(key)
        s.keys.append(key)
        held.sessions.add(s.id)
        self._held.move_to_end(key)
        while len(s.keys) > IMAGES_PER_SESSION:
            self._detach(s, s.keys[0])

    def _detach(self, s: Session, key: str) -> None:
        s.keys.remove(key)
        held = self._held.get(key)
        if held is not None:
            held.sessions.discard(s.id)
            if not held.sessions:
                del self._held[key]

    def _current_keys(self, sessions: list[Session]) -> set[str]:
        return {s.current for s in sessions if s.current is not None}

    def _make_room(self, nbytes: int, requester: Session) -> None:
        if nbytes > self.max_bytes:
            raise ServerFullError(
                f"this image needs {nbytes / 2**20:.0f} MB; the server's image memory is "
                f"{self.max_bytes / 2**20:.0f} MB in all"
            )
        now = self._clock()
        # 1. earlier images, of any session (the requester's current one is about to be replaced)
        protected = self._current_keys([s for s in self._sessions.values() if s is not requester])
        for key in list(self._held):
            if self.bytes_held() + nbytes <= self.max_bytes:
                return
            if key in protected:
                continue
            for sid in list(self._held[key].sessions):
                self._detach(self._sessions[sid], key)
        # 2. sessions idle for longer than idle_s, longest idle first
        idle = sorted(
            (s for s in self._sessions.values() if s is not requester and now - s.last_seen > self.idle_s),
            key=lambda s: s.last_seen,
        )
        for s in idle:
            if self.bytes_held() + nbytes <= self.max_bytes:
                return
            self.release(s.id)
        if self.bytes_held() + nbytes > self.max_bytes:
            active = sum(1 for s in self._sessions.values() if s.keys)
            raise ServerFullError(
                f"the server is full: {active} active session(s) hold {self.bytes_held() / 2**20:.0f} MB of "
                f"its {self.max_bytes / 2**20:.0f} MB of image memory. Try again in a few minutes."
            )

    def bytes_held(self) -> int:
        with self._lock:
            return sum(h.nbytes for h in self._held.values())

    # -- per-session settings and work ---------------------------------------------------------------

    def mark_viewed(self, session: str, settings: Hashable) -> bool:
        """Record the settings the page now shows; cancels a generation made for other settings.

        Returns whether the page's answers (if any) are for other settings and must be cleared.
        """
        with self._lock:
            s = self._session(session)
            s.viewed = settings
            if s.running is not None and s.running_for is not None and s.running_for != settings:
                s.running.set()
            stale = s.answered is not None and s.answered != settings
            if stale:
                s.answered = None
                self._forget_answer_records(s)
            return stale

    def forget_answers(self, session: str) -> bool:
        """The page's answers no longer match (the prompt or the truth was edited): stop and forget them.

        Returns whether there were answers (or a running answer) to forget.
        """
        with self._lock:
            s = self._sessions.get(session)
            if s is None:
                return False
            had = s.answered is not None or s.running is not None
            if s.running is not None:
                s.running.set()
            s.answered = None
            self._forget_answer_records(s)
            return had

    @staticmethod
    def _forget_answer_records(s: Session) -> None:
        for kind in ANSWER_RECORDS:
            s.records.pop(kind, None)

    def start_answer(self, session: str, settings: Hashable) -> threading.Event:
        """Begin a generation for ``settings``: cancels the session's previous one; returns its event.

        ``settings`` may be None while the request is still being checked (its image encoded); the
        event exists from then on, so a Stop or a closed tab in that time is not lost. The answers
        shown before are forgotten (the page clears them as it asks for new ones).
        """
        with self._lock:
            s = self._session(session)
            if s.running is not None:
                s.running.set()
            s.answered = None
            self._forget_answer_records(s)
            s.running, s.running_for, s.viewed_at_start = threading.Event(), settings, s.viewed
            return s.running

    def finish_answer(self, session: str, settings: Hashable, event: threading.Event) -> bool:
        """End a generation; returns whether its answers still match what the page shows.

        They do unless the work was cancelled or the page's settings moved, while it ran, to
        something other than what it answered (a view that merely had not caught up with a new
        image yet does not count).
        """
        with self._lock:
            s = self._sessions.get(session)
            if s is None:
                return False
            started_view = s.viewed_at_start
            if s.running is event:
                s.running, s.running_for, s.viewed_at_start = None, None, None
            current = not event.is_set() and s.viewed in (None, settings, started_view)
            if current:
                s.answered = settings
            return current

    def set_record(self, session: str, kind: str, record: dict | None) -> None:
        """Keep the session's latest ``"view"`` or ``"answers"`` record (what export writes)."""
        with self._lock:
            s = self._session(session)
            if record is None:
                s.records.pop(kind, None)
            else:
                s.records[kind] = record

    def record(self, session: str, kind: str) -> dict | None:
        with self._lock:
            s = self._sessions.get(session)
            return None if s is None else s.records.get(kind)

    def set_running_for(self, session: str, event: threading.Event, settings: Hashable) -> None:
        """Name the settings the running answer ``event`` computes, once they are known."""
        with self._lock:
            s = self._sessions.get(session)
            if s is not None and s.running is event:
                s.running_for = settings

    def cancel(self, session: str) -> bool:
        """Stop the session's running generation; returns whether there was one."""
        with self._lock:
            s = self._sessions.get(session)
            if s is None or s.running is None:
                return False
            s.running.set()
            return True

    def export_dir(self, session: str) -> Path:
        """A private folder for the session's export files, emptied of earlier exports."""
        with self._lock:
            s = self._session(session)
            if self._export_root is None or not self._export_root.is_dir():
                self._export_root = Path(tempfile.mkdtemp(prefix="prunelens-exports-"))
                weakref.finalize(self, shutil.rmtree, self._export_root, True)
            if s.export_dir is None or not s.export_dir.is_dir():
                s.export_dir = Path(tempfile.mkdtemp(prefix="session-", dir=self._export_root))
            for old in s.export_dir.iterdir():
                old.unlink(missing_ok=True)
            return s.export_dir

    def release(self, session: str) -> None:
        """Forget a session: cancel its work, free its images, delete its export files."""
        with self._lock:
            s = self._sessions.pop(session, None)
            self._released[session] = None
            while len(self._released) > RELEASED_REMEMBERED:
                self._released.popitem(last=False)
            if s is None:
                return
            if s.running is not None:
                s.running.set()
            for key in list(s.keys):
                self._detach(s, key)
            if s.export_dir is not None:
                shutil.rmtree(s.export_dir, ignore_errors=True)

    def stats(self) -> dict[str, int]:
        """Sessions, entries and bytes held now (for the load benchmark and tests)."""
        with self._lock:
            return {
                "sessions": len(self._sessions),
                "entries": len(self._held),
                "bytes": self.bytes_held(),
                "max_bytes": self.max_bytes,
            }

"""The append-only answer log of one reader: one JSON record per line, fsync'd per answer.

``STUDY/answers/<reader>.jsonl``::

    {"type": "reader", "reader": "r1", "study_id": "...", "seed": 123, "time_utc": "..."}
    {"type": "open", "reader": "r1", "seq": 1, "index": 0, "time_utc": "..."}
    {"type": "answer", "reader": "r1", "seq": 2, "case": "3fa0c1...", "index": 0, "realism": 7,
     "criteria": {"boundaries": true, ...} or null, "comment": "", "elapsed_s": 4.2, "time_utc": "..."}

A changed answer is a new ``answer`` record: the log is an audit trail and the last
record for a case counts. Each record is written with one ``write`` and ``fsync``'d
before the call returns. A torn last line (power cut) is detected when the log is
opened again: it is moved to ``<reader>.jsonl.corrupt`` with a warning and the log is
cut back to its last whole record. While open for writing, the log holds an exclusive
lock, so two processes never write the same reader's file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptFileError, HistogenInputError
from .layout import CRITERIA_KEYS, SCORE_MAX, SCORE_MIN, check_reader_id, fsync_dir

try:  # POSIX advisory locks; released by the OS when the process dies, even by SIGKILL
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Answer", "AnswerLog", "LogContents", "read_answer_log", "check_answer", "utc_now", "LogWarning"]


class LogWarning(UserWarning):
    """A damaged answer log was repaired or a damaged line skipped."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Answer:
    """One answer record of a reader.

    Attributes
    ----------
    case : str
        Neutral case id.
    index : int
        Position of the case in the reader's order (0-based).
    realism : int
        1 (certainly synthetic) .. 10 (certainly real).
    criteria : dict or None
        Criterion key -> bool for image-with-mask studies.
    comment : str
    seq : int
        Record number in the log.
    time_utc : str
    elapsed_s : float or None
        Seconds the case was on screen before this answer.
    """

    case: str
    index: int
    realism: int
    criteria: dict | None = None
    comment: str = ""
    seq: int = 0
    time_utc: str = ""
    elapsed_s: float | None = None

    def same_content(self, other: "Answer | None") -> bool:
        """Whether ``other`` gives the same score, criteria and comment."""
        return other is not None and (self.realism, self.criteria or None, self.comment) == (
            other.realism, other.criteria or None, other.comment)


@dataclass
class LogContents:
    """What a log holds: its header, all answer records in order, and any warnings."""

    reader: str
    header: dict | None
    records: list = field(default_factory=list)
    answers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    good_bytes: int = 0

    def latest(self) -> dict:
        """Case id -> last :class:`Answer` (the one that counts)."""
        return {a.case: a for a in self.answers}


def check_answer(realism, criteria=None, comment="", *, criteria_keys=None) -> tuple[int, dict | None, str]:
    """Validate an answer's parts; return them normalised.

    Raises
    ------
    HistogenInputError
        Score outside 1..10, unknown or non-boolean criteria, comment not text.
    """
    if isinstance(realism, bool) or not isinstance(realism, (int, float)) or int(realism) != realism:
        raise HistogenInputError(f"The realism score must be a whole number {SCORE_MIN}-{SCORE_MAX}, not {realism!r}.")
    realism = int(realism)
    if not SCORE_MIN <= realism <= SCORE_MAX:
        raise HistogenInputError(f"The realism score must be {SCORE_MIN}-{SCORE_MAX} (key 0 gives 10), not {realism}.")
    if criteria is not None:
        if not isinstance(criteria, dict):
            raise HistogenInputError("Criteria must be a mapping of criterion -> yes/no.")
        allowed = tuple(criteria_keys) if criteria_keys is not None else CRITERIA_KEYS
        unknown = sorted(set(criteria) - set(allowed))
        if unknown:
            raise HistogenInputError(f"Unknown criteria {unknown}; the criteria are {list(allowed)}.")
        if not all(isinstance(v, bool) for v in criteria.values()):
            raise HistogenInputError("Each criterion is answered yes (True) or no (False).")
        criteria = {k: bool(criteria.get(k, False)) for k in allowed}
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise HistogenInputError("The comment must be text.")
    return realism, criteria, comment.strip()


def _answer_from(record: dict) -> Answer:
    realism, criteria, comment = check_answer(record["realism"], record.get("criteria"), record.get("comment", ""))
    case = record["case"]
    if not isinstance(case, str) or not case:
        raise ValueError("no case id")
    return Answer(case=case, index=int(record["index"]), realism=realism, criteria=criteria, comment=comment,
                  seq=int(record.get("seq", 0)), time_utc=str(record.get("time_utc", "")),
                  elapsed_s=None if record.get("elapsed_s") is None else float(record["elapsed_s"]))


def _parse(data: bytes, reader: str, path: Path, tolerant: bool = False) -> LogContents:
    """Parse log bytes; a damaged last line is skipped with a warning, elsewhere it is an error
    (``tolerant``: every damaged line, or line of another reader, is skipped with a warning)."""
    parts = data.split(b"\n")  # the part after the final newline is b"" for a whole log, else a torn line
    contents = LogContents(reader=reader, header=None)
    pos = 0
    for number, raw in enumerate(parts, start=1):
        is_tail = number == len(parts)
        end = pos + len(raw) + (0 if is_tail else 1)
        if not raw.strip(b" \t\r"):
            if is_tail and raw:
                contents.warnings.append(f"{path.name}: an incomplete last line ({len(raw)} bytes) was skipped.")
                break
            pos = contents.good_bytes = end
            continue
        try:
            record = _decode(raw)
        except (ValueError, KeyError, TypeError, HistogenInputError) as err:
            if tolerant and not is_tail:
                contents.warnings.append(f"{path.name}: damaged line {number} was skipped ({err}).")
                pos = end
                continue
            if any(later.strip(b" \t\r\x00") for later in parts[number:]):
                raise CorruptFileError(
                    f"{path} line {number} is damaged ({err}) and is not the last line; the log was edited or "
                    "the disk is failing. Keep a copy, then remove or repair that line."
                ) from None
            contents.warnings.append(
                f"{path.name}: the damaged last line {number} was skipped (an answer being written when napari "
                "or the machine stopped); it was not recorded.")
            break
        if record.get("reader") != reader and tolerant:
            contents.warnings.append(f"{path.name}: line {number} belongs to reader {record.get('reader')!r} "
                                     "and was skipped.")
            pos = end
            continue
        if record.get("reader") != reader:
            raise HistogenInputError(
                f"{path.name} line {number} belongs to reader {record.get('reader')!r}, not {reader!r}: each "
                "reader has their own answer file; open the study with your own reader id."
            )
        if record["type"] == "answer":
            contents.answers.append(_answer_from(record))
        elif record["type"] == "reader" and contents.header is None:
            contents.header = record
        contents.records.append(record)
        pos = contents.good_bytes = end
    return contents


def _decode(raw: bytes) -> dict:
    if b"\x00" in raw:
        raise ValueError("zero bytes")
    record = json.loads(raw.decode("utf-8-sig"))  # a BOM (an editor's save) is not damage
    if not isinstance(record, dict) or record.get("type") not in ("reader", "open", "answer"):
        raise ValueError("not a log record")
    if record["type"] == "answer":
        _answer_from(record)
    return record


def read_answer_log(path, reader: str | None = None, *, tolerant: bool = False) -> LogContents:
    """Read a reader's log without changing it (for status and report).

    Parameters
    ----------
    path : str or Path
        ``answers/<reader>.jsonl``.
    reader : str, optional
        Expected reader id; default: the file's stem.
    tolerant : bool
        Skip every damaged line (and any line of another reader) with a warning instead
        of refusing the log: one damaged log never blocks the status or report of others.

    Returns
    -------
    LogContents
        A damaged last line is skipped and named in ``warnings`` (also issued as a
        :class:`LogWarning`).
    """
    path = Path(path)
    reader = check_reader_id(reader if reader is not None else path.stem)
    if not path.is_file():
        return LogContents(reader=reader, header=None)
    contents = _parse(path.read_bytes(), reader, path, tolerant)
    for note in contents.warnings:
        warnings.warn(note, LogWarning, stacklevel=2)
    return contents


class AnswerLog:
    """A reader's answer log opened for appending (exclusive, crash-safe).

    Parameters
    ----------
    path : str or Path
        ``answers/<reader>.jsonl``; created when missing.
    reader : str
        The reader who writes it; the file's name must be ``<reader>.jsonl``.

    Raises
    ------
    HistogenInputError
        The file is another reader's, or the log is open in another process.
    CorruptFileError
        A line other than the last is damaged.
    """

    def __init__(self, path, reader: str):
        self.path = Path(path)
        self.reader = check_reader_id(reader)
        if self.path.stem != self.reader or self.path.suffix != ".jsonl":
            raise HistogenInputError(
                f"Reader {self.reader!r} may only write {self.reader}.jsonl, not {self.path.name}: "
                "each reader has their own answer file."
            )
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as err:
            raise HistogenInputError(
                f"Cannot write answers to {self.path} ({err.strerror or err}); copy the study folder to a place "
                "where you may write, then open it there."
            ) from None
        try:
            _lock(fd, self.path, self.reader)
            if created:
                fsync_dir(self.path.parent)
            data = _read_all(fd)
            self.contents = _parse(data, self.reader, self.path)
            if self.contents.good_bytes < len(data):
                self._repair(fd, data, self.contents.good_bytes)
            elif data and not data.endswith(b"\n"):
                # a whole record whose newline did not reach the disk: keep it, end the line
                os.write(fd, b"\n")
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._seq = max((int(r.get("seq", 0)) for r in self.contents.records), default=0)
        for note in self.contents.warnings:
            warnings.warn(note, LogWarning, stacklevel=2)

    # -- state ---------------------------------------------------------------------------
    @property
    def header(self) -> dict | None:
        return self.contents.header

    @property
    def answers(self) -> list:
        return list(self._answers)

    @property
    def warnings(self) -> list:
        return list(self.contents.warnings)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def latest(self) -> dict:
        """Case id -> the answer that counts (the last one)."""
        return {a.case: a for a in self._answers}

    # -- writing -------------------------------------------------------------------------
    def append(self, record: dict) -> dict:
        """Append one record, flushed and fsync'd before returning.

        Parameters
        ----------
        record : dict
            Must hold ``type``; ``reader`` (when given) must be this log's reader.
            ``seq`` and ``time_utc`` are filled in.

        Returns
        -------
        dict
            The record as written (a new dict; ``record`` is not modified).
        """
        if self._fd is None:
            raise HistogenInputError("This answer log is closed; open the study again to keep scoring.")
        owner = record.get("reader", self.reader)
        if owner != self.reader:
            raise HistogenInputError(
                f"Reader {owner!r} cannot write to {self.reader!r}'s answer log; open the study with your own id."
            )
        if record.get("type") not in ("reader", "open", "answer"):
            raise HistogenInputError(f"Unknown record type {record.get('type')!r}.")
        answer = None
        if record["type"] == "answer":
            answer = _answer_from({**record, "seq": self._seq + 1})
        written = {"type": record["type"], "reader": self.reader, "seq": self._seq + 1, "time_utc": utc_now()}
        written.update({k: v for k, v in record.items() if k not in ("type", "reader", "seq")})
        line = (json.dumps(written, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            _write_fully(self._fd, line)
            os.fsync(self._fd)
        except OSError as err:  # disk full, drive gone: the answer is not recorded, and says so
            try:
                os.ftruncate(self._fd, size)  # no half record left behind
            except OSError:
                pass
            raise HistogenInputError(
                f"Your answer could not be saved ({err.strerror or err}); it is NOT recorded. Free disk space or "
                "reconnect the drive, then answer again."
            ) from None
        self._seq += 1
        if answer is not None:
            self._answers.append(dataclasses.replace(answer, time_utc=written["time_utc"]))
        self.contents.records.append(written)
        if written["type"] == "reader" and self.contents.header is None:
            self.contents.header = written
        return dict(written)

    def close(self) -> None:
        """Release the lock and close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # pragma: no cover - safety net
        try:
            self.close()
        except Exception:
            pass

    @property
    def _answers(self) -> list:
        return self.contents.answers

    def _repair(self, fd: int, data: bytes, good: int) -> None:
        """Move a torn tail to ``<log>.corrupt`` and cut the log back to its last whole record."""
        corrupt = self.path.with_name(self.path.name + ".corrupt")
        with open(corrupt, "ab") as fh:
            fh.write(f"--- {utc_now()} cut from {self.path.name} at byte {good}\n".encode())
            fh.write(data[good:] + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.ftruncate(fd, good)
        os.fsync(fd)
        note = f"{self.path.name}: its damaged tail was kept in {corrupt.name} and removed from the log."
        self.contents.warnings.append(note)


def _lock(fd: int, path: Path, reader: str) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HistogenInputError(
            f"Reader {reader!r}'s answers ({path.name}) are open in another napari window or process; "
            "close that session first (one session per reader)."
        ) from None


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

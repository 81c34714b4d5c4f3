"""A reader's scoring session: their case order, where they are, their answers.

Opening a session reads the manifest, the cases and the reader's own log, never the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..io.pairs import read_rgb_image
from .answers import Answer, AnswerLog, check_answer, read_answer_log
from .layout import (
    answer_log_path,
    answers_dir,
    case_image_path,
    case_mask_path,
    check_reader_id,
    load_manifest,
)

__all__ = ["CaseData", "ReaderSession", "reader_order", "reader_seed", "resume_index", "reader_progress",
           "token_hash"]

#: PBKDF2 rounds of the reader token's hash in the log header (the log is readable by every reader).
_TOKEN_ROUNDS = 100_000


@dataclass(frozen=True)
class CaseData:
    """What a reader sees of a case: pixels, and the mask in image-with-mask studies.

    Attributes
    ----------
    case : str
        Neutral id.
    image : ndarray (H, W, 3) uint8
    instances, types : ndarray (H, W) int32 or None
        Nuclei instance map and class per pixel.
    """

    case: str
    image: np.ndarray
    instances: np.ndarray | None = None
    types: np.ndarray | None = None

    def classes(self) -> dict[int, int]:
        """Instance id -> class id, from the two maps."""
        if self.instances is None:
            return {}
        from ..masks import classes_from_type_map

        return classes_from_type_map(self.instances, self.types)


def token_hash(study_id: str, reader: str, token: str) -> str:
    """What a reader's log header records of their token: a slow salted hash, not the token."""
    salt = f"histogen-reader/{study_id}/{reader}".encode()
    return hashlib.pbkdf2_hmac("sha256", str(token).strip().encode("utf-8"), salt, _TOKEN_ROUNDS).hex()


def reader_seed(study_id: str, reader: str) -> int:
    """Legacy: the seed of an unlisted reader in studies made before orders were recorded."""
    digest = hashlib.sha256(f"{study_id}/{reader}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def reader_order(cases, seed: int) -> list[str]:
    """The reader's case order: a seeded random permutation of the (randomly named) cases."""
    ordered = sorted(str(c) for c in cases)
    return [ordered[i] for i in np.random.default_rng(int(seed)).permutation(len(ordered))]


def resume_index(order, answers) -> int:
    """Where a reader resumes: the first unanswered case after the one answered last.

    Parameters
    ----------
    order : list of str
        The reader's case order.
    answers : list of Answer
        Their answer records, oldest first.

    Returns
    -------
    int
        0 with no answers; the first unanswered case after the case of the latest
        answer, else the first unanswered from the start; the last case when all are
        answered.
    """
    order = list(order)
    answered = {a.case for a in answers}
    if not answers:
        return 0
    last = answers[-1].case
    start = order.index(last) + 1 if last in order else 0
    for i in list(range(start, len(order))) + list(range(0, start)):
        if order[i] not in answered:
            return i
    return len(order) - 1


class ReaderSession:
    """One reader scoring one study.

    Parameters
    ----------
    study : str or Path
        Study folder.
    reader : str
        Reader id (letters, digits, ``-``, ``_``).
    token : str, optional
        The reader's token. The first opening issues one (:attr:`issued_token`, shown to
        the reader once); every later opening of that reader's answers needs it, so one
        reader cannot open (read or change) another's answers through the product.

    Raises
    ------
    HistogenInputError
        Not a study folder, bad reader id, a reader the study does not list, the
        reader's log open elsewhere or belonging to another study, a missing or wrong
        token.

    Notes
    -----
    Resumes where the reader stopped (see :func:`resume_index`). Each answer is on disk
    (fsync) when :meth:`record` returns. The case order is the one the manifest records
    for a listed reader, else a secret random one recorded in the reader's log.
    """

    def __init__(self, study, reader, token=None):
        self.study = Path(study)
        self.reader = check_reader_id(reader)
        manifest = load_manifest(self.study)
        self.study_id = str(manifest.get("study_id", ""))
        self.title = str(manifest.get("title") or "Reader study")
        self.mode = manifest.get("mode", "image")
        self.criteria = tuple((c["key"], c["text"]) for c in manifest.get("criteria") or [])
        self.mask_scheme = manifest.get("mask_scheme")
        listed = manifest.get("readers") or {}
        if listed and self.reader not in listed and not manifest.get("open_to_any_reader", False):
            raise HistogenInputError(
                f"Reader {self.reader!r} is not in this study (readers: {', '.join(sorted(listed))}); "
                "use the id the study owner gave you."
            )
        self._log = AnswerLog(answer_log_path(self.study, self.reader), self.reader)
        self.issued_token: str | None = None
        try:
            header = self._log.header
            cases = manifest["cases"]
            if header is None:
                order = _listed_order(listed.get(self.reader), cases)
                if order is None:
                    order = list(cases)
                    secrets.SystemRandom().shuffle(order)
                self.issued_token = secrets.token_hex(6)
                self._log.append({"type": "reader", "study_id": self.study_id, "order": order,
                                  "token_pbkdf2": token_hash(self.study_id, self.reader, self.issued_token),
                                  "n_cases": len(cases)})
            else:
                if str(header.get("study_id")) != self.study_id:
                    raise HistogenInputError(
                        f"{answer_log_path(self.study, self.reader).name} belongs to another study "
                        f"({header.get('study_id')}); it was copied in by mistake. Move it away to start afresh."
                    )
                _check_token(header, self.study_id, self.reader, token)
                order = _listed_order(header, cases)
                if order is None:
                    raise CorruptFileError(f"The answer log of {self.reader!r} records no case order; "
                                           "ask the study owner.")
            self.order = order
            self.index = resume_index(self.order, self._log.answers)
            self._shown_at = time.monotonic()
            self._log.append({"type": "open", "index": self.index})
        except BaseException:
            self._log.close()
            raise

    # -- where the reader is -----------------------------------------------------------
    @property
    def n_cases(self) -> int:
        return len(self.order)

    @property
    def case_id(self) -> str:
        return self.order[self.index]

    @property
    def progress(self) -> str:
        """``'17 / 120'``: the case on screen, of all."""
        return f"{self.index + 1} / {self.n_cases}"

    @property
    def n_answered(self) -> int:
        latest = self._log.latest()
        return sum(case in latest for case in self.order)

    @property
    def complete(self) -> bool:
        return self.n_answered == self.n_cases

    @property
    def warnings(self) -> list:
        """Repairs made to the log when it was opened (torn last line)."""
        return self._log.warnings

    @property
    def closed(self) -> bool:
        return self._log.closed

    def answer(self, index: int | None = None) -> Answer | None:
        """The answer that counts for the case at ``index`` (default: the current one)."""
        return self._log.latest().get(self.order[self._checked(index)])

    def answers(self) -> dict:
        """Case id -> the answer that counts, for this reader."""
        return self._log.latest()

    # -- showing a case ------------------------------------------------------------------
    def load_case(self, index: int | None = None) -> CaseData:
        """Pixels (and mask) of the case at ``index`` (default: the current one)."""
        case = self.order[self._checked(index)]
        image = read_rgb_image(case_image_path(self.study, case), name="case image")
        if self.mode != "image+mask":
            return CaseData(case, image)
        path = case_mask_path(self.study, case)
        try:
            maps = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CorruptFileError(f"The mask of case {case} cannot be read ({err}); ask the study owner.") from None
        if maps.ndim != 3 or maps.shape[0] != 2 or maps.shape[1:] != image.shape[:2]:
            raise CorruptFileError(f"The mask of case {case} does not fit its image; ask the study owner.")
        return CaseData(case, image, np.asarray(maps[0], np.int32), np.asarray(maps[1], np.int32))

    # -- answering and moving ---------------------------------------------------------
    def record(self, realism, criteria=None, comment: str = "") -> Answer:
        """Record the answer for the current case; on disk when this returns.

        Parameters
        ----------
        realism : int
            1 (certainly synthetic) .. 10 (certainly real).
        criteria : dict, optional
            Criterion key -> bool; image-with-mask studies only (missing keys: False).
        comment : str, optional

        Returns
        -------
        Answer
            The answer that now counts. An answer equal to the recorded one writes
            nothing; a changed one is a new record (the last one counts).
        """
        keys = [k for k, _ in self.criteria]
        if criteria is not None and not keys:
            raise HistogenInputError("This study shows no masks, so it has no criteria; give the score only.")
        if keys:
            criteria = {k: False for k in keys} | dict(criteria or {})
        realism, criteria, comment = check_answer(realism, criteria, comment, criteria_keys=keys or None)
        previous = self.answer()
        new = Answer(self.case_id, self.index, realism, criteria, comment)
        if new.same_content(previous):
            return previous
        written = self._log.append({
            "type": "answer", "case": self.case_id, "index": self.index, "realism": realism,
            "criteria": criteria, "comment": comment,
            "elapsed_s": round(time.monotonic() - self._shown_at, 3),
        })
        return dataclasses.replace(new, seq=written["seq"], time_utc=written["time_utc"],
                                   elapsed_s=written["elapsed_s"])

    def go_to(self, index: int) -> int:
        """Show the case at ``index``; returns the new index."""
        self.index = self._checked(index)
        self._shown_at = time.monotonic()
        return self.index

    def next(self, *, require_answer: bool = True) -> bool:
        """Move to the next case; False at the last one.

        Raises
        ------
        HistogenInputError
            ``require_answer`` and the current case has no answer yet.
        """
        if require_answer and self.answer() is None:
            raise HistogenInputError("Score this case first: keys 1-9, and 0 for 10.")
        if self.index >= self.n_cases - 1:
            return False
        self.go_to(self.index + 1)
        return True

    def previous(self) -> bool:
        """Move to the previous case; False at the first one."""
        if self.index == 0:
            return False
        self.go_to(self.index - 1)
        return True

    def close(self) -> None:
        """Release the reader's log (answers are already on disk)."""
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _checked(self, index) -> int:
        if index is None:
            return self.index
        index = int(index)
        if not 0 <= index < self.n_cases:
            raise HistogenInputError(f"Case number {index + 1} is outside 1..{self.n_cases}.")
        return index


def _listed_order(entry, cases) -> list[str] | None:
    """The order an entry (manifest reader or log header) records: ``order``, or a legacy ``seed``."""
    if not isinstance(entry, dict):
        return None
    if "order" in entry:
        order = entry["order"]
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(cases):
            raise CorruptFileError("A recorded case order does not list the study's cases; ask the study owner.")
        return [str(c) for c in order]
    if "seed" in entry:
        return reader_order(cases, int(entry["seed"]))
    return None


def _check_token(header: dict, study_id: str, reader: str, token) -> None:
    expected = header.get("token_pbkdf2")
    if expected is None:  # a log from before reader tokens
        return
    if token is None or not str(token).strip():
        raise HistogenInputError(
            f"Reader {reader!r} has started this study; their answers open only with their reader token (shown "
            "when they first opened it). Give it (--token, or the token field), or use your own reader id."
        )
    if not hmac.compare_digest(str(expected), token_hash(study_id, reader, token)):
        raise HistogenInputError(f"That is not reader {reader!r}'s token; give the token shown when "
                                 f"{reader!r} first opened the study.")


def reader_progress(study) -> list[dict]:
    """Progress per reader without unblinding: answered cases, records, last activity.

    Returns
    -------
    list of dict
        ``reader``, ``answered``, ``n_cases``, ``records``, ``last_utc``, ``warnings``;
        readers named at creation who have not started are listed with 0. A damaged line
        is skipped with a warning (it never blocks the other readers); answer files of
        no reader of the study are listed with ``ignored`` True.
    """
    manifest = load_manifest(study)
    cases = set(manifest["cases"])
    rows = {}
    folder = answers_dir(study)
    listed = set(manifest.get("readers") or {})
    open_study = not listed or bool(manifest.get("open_to_any_reader", False))
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            reader = check_reader_id(path.stem)
        except HistogenInputError:
            reader = None
        if reader is None or (not open_study and reader not in listed):
            rows[f"~{path.name}"] = {"reader": path.name, "answered": 0, "n_cases": len(cases), "records": 0,
                                     "last_utc": "", "ignored": True,
                                     "warnings": [f"{path.name} is no reader of this study; it is ignored."]}
            continue
        contents = read_answer_log(path, tolerant=True)
        latest = contents.latest()
        rows[contents.reader] = {
            "reader": contents.reader,
            "answered": sum(c in latest for c in cases),
            "n_cases": len(cases),
            "records": len({(a.case, a.seq) for a in contents.answers}),
            "last_utc": contents.records[-1].get("time_utc", "") if contents.records else "",
            "warnings": list(contents.warnings),
        }
    for reader in manifest.get("readers") or {}:
        rows.setdefault(reader, {"reader": reader, "answered": 0, "n_cases": len(cases), "records": 0,
                                 "last_utc": "", "warnings": []})
    return [rows[r] for r in sorted(rows)]

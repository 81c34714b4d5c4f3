"""Blinded reader studies: pathologists score real and synthetic histology without knowing which is which.

- :mod:`.create`: copy cases under secret random ids, write the key apart (:func:`create_study`).
- :mod:`.leaks`: statistics that could tell the groups apart, with their AUCs (checked at creation).
- :mod:`.session`: a reader's order, token, position and answers (:class:`ReaderSession`).
- :mod:`.answers`: the append-only, fsync'd answer log of one reader (:class:`AnswerLog`).
- :mod:`.report`: unblind with the key; tables, tests, plots (:func:`write_report`).
- :mod:`.stats`: the statistics (scipy, krippendorff).
"""

from .answers import Answer, AnswerLog, LogWarning, read_answer_log
from .create import StudyCreated, create_study
from .layout import CRITERIA, check_reader_id, default_key_path, find_key_path, key_dir, load_manifest
from .session import CaseData, ReaderSession, reader_order, reader_progress, resume_index

#: the report's names, imported on first use: the report needs pandas and scipy.stats (0.8 s to
#: import), which the reader study dock would otherwise load on napari's GUI thread when it opens
_REPORT_NAMES = ("StudyReport", "compute_report", "load_key", "write_report")


def __getattr__(name: str):
    if name in _REPORT_NAMES:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Answer",
    "AnswerLog",
    "CaseData",
    "CRITERIA",
    "LogWarning",
    "ReaderSession",
    "StudyCreated",
    "StudyReport",
    "check_reader_id",
    "compute_report",
    "create_study",
    "default_key_path",
    "find_key_path",
    "key_dir",
    "load_key",
    "load_manifest",
    "read_answer_log",
    "reader_order",
    "reader_progress",
    "resume_index",
    "write_report",
]

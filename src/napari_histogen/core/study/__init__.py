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
from .report import StudyReport, compute_report, load_key, write_report
from .session import CaseData, ReaderSession, reader_order, reader_progress, resume_index

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

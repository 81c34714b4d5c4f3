"""``histogen study``: create a blinded reader study, follow its progress, report it.

Wired into :func:`napari_histogen.cli.build_parser` by :func:`add_study_parser`. Handlers
return an exit status; bad input raises ``HistogenInputError``, which ``cli.main`` turns
into a one-line message and status 2.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from .cli_common import has_display, out_dir_arg, positive_int, seed_int
from .core.errors import HistogenInputError

__all__ = ["add_study_parser", "cmd_study_create", "cmd_study_report", "cmd_study_status", "cmd_study_score"]


def cmd_study_create(args) -> int:
    """Copy real and synthetic images into a blinded study folder; write the key apart."""
    from .core.study import create_study

    result = create_study(
        args.real, args.synthetic, args.out, masks=args.masks, per_class_from=args.per_class_from,
        readers=args.readers, balance=args.balance, max_per_kind=args.max_per_kind, crop=args.crop,
        scheme=args.scheme, seed=args.seed, key_path=args.key_out, title=args.title, reencode=args.reencode,
        scale=args.scale,
    )
    print(result.describe())
    print(f"Readers score with: histogen study score {result.study} --reader ID "
          "(or the Reader study dock in napari: Plugins > Histogen).")
    return 0


def cmd_study_status(args) -> int:
    """Progress per reader, without unblinding."""
    from .core.study import load_manifest, reader_progress

    manifest = load_manifest(args.study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = reader_progress(args.study)
    print(f"{manifest.get('title', 'Reader study')} ({manifest.get('study_id')}): {len(manifest['cases'])} cases, "
          f"mode {manifest.get('mode')}")
    if not rows:
        print("No reader has started yet.")
    for row in rows:
        if row.get("ignored"):
            print(f"  ignored: {row['reader']} (no reader of this study)")
            continue
        line = f"  {row['reader']:16s} {row['answered']:4d} / {row['n_cases']} answered, {row['records']} records"
        if row["last_utc"]:
            line += f", last {row['last_utc']}"
        print(line)
        for note in row["warnings"]:
            print(f"    warning: {note}")
    return 0


def cmd_study_report(args) -> int:
    """Unblind with the key: answers CSV, summary tables, statistics, plots."""
    from .core.study import write_report

    report = write_report(args.study, args.out, key_path=args.key, threshold=args.threshold, n_boot=args.bootstrap,
                          seed=args.seed, plots=not args.no_plots)
    print(report.markdown())
    print(f"Wrote {len(report.files)} files to {Path(args.out)}/:")
    for role, path in report.files.items():
        print(f"  {role:22s} {path}")
    return 0


def cmd_study_score(args) -> int:
    """Open napari with the reader study dock, the study open for ``--reader``."""
    from .core.study import ReaderSession, check_reader_id, load_manifest

    load_manifest(args.study)
    check_reader_id(args.reader)
    session = ReaderSession(args.study, args.reader, token=args.token)  # fail here, plainly, before napari starts
    session.close()
    token = session.issued_token or args.token
    if session.issued_token:
        print(f"Your reader token is {session.issued_token}. Write it down: you need it to resume "
              f"(--token {session.issued_token}), and nobody else can open your answers without it.")
    if not has_display():
        raise HistogenInputError("No display: scoring needs a screen (napari). Run 'histogen study score' on a "
                                 "desktop, or set DISPLAY.")

    import napari

    from .widgets.study import StudyWidget

    viewer = napari.Viewer(title="Reader study")
    widget = StudyWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: reader study", area="right")
    widget.open_study(args.study, args.reader, token)
    napari.run()
    return 0


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``study`` with subcommands ``create``, ``status``, ``score``, ``report`` to ``subparsers``."""
    study = subparsers.add_parser(
        "study", help="blinded reader study: create, status, score, report",
        description="Pathologists score real and synthetic patches for realism (1 = synthetic, 10 = real) and, "
                    "with masks, four mask-consistency criteria, without knowing which is which. "
                    "Workflow: 'study create' -> readers 'study score' (or the napari dock) -> 'study report'.",
    )
    sub = study.add_subparsers(dest="study_verb", metavar="STEP")
    study.set_defaults(func=lambda args: (study.print_help(), 0)[1])

    create = sub.add_parser(
        "create", help="copy real and synthetic images under neutral ids, key kept apart",
        description="Every case is re-encoded as a metadata-free PNG named by a random id in STUDY/cases/; which "
                    "is real, its group, original file and any provenance (sidecar <stem>.json or "
                    "<stem>_provenance.json, PNG text) go to the key, written outside the study folder "
                    "(in the key folder, mode 0600, or --key-out), so handing STUDY to readers never hands them "
                    "the key. Real and synthetic counts are balanced; each reader's case order "
                    "is a recorded random permutation.",
    )
    create.add_argument("--real", required=True, help="folder of real images (PNG, JPEG, TIFF)")
    create.add_argument("--synthetic", required=True, help="folder of synthetic images")
    create.add_argument("--masks", nargs="+", default=None, metavar="DIR",
                        help="folder(s) with each image's nuclei mask (<stem>_mask.npz/.tif/.png/.npy, <stem>.npz "
                             "or <stem>.png/.tif/.npy); makes an image-with-mask study scored also on the four "
                             "criteria (boundaries match, types right, painted nuclei missing, extra nuclei)")
    create.add_argument("--per-class-from", default=None, metavar="subfolders|CSV",
                        help="group or class of each image: 'subfolders' (REAL/<group>/*.png and "
                             "SYNTHETIC/<group>/*.png) or a CSV with columns file,group (file = name, stem or "
                             "path relative to its folder); default: one group")
    create.add_argument("--readers", nargs="+", default=None, metavar="ID",
                        help="reader ids allowed to score, each with a recorded order seed (default: any id)")
    create.add_argument("--balance", choices=("overall", "group", "none"), default="overall",
                        help="leave out random images of the larger kind so real and synthetic counts match, "
                             "overall or per group (default overall)")
    create.add_argument("--max-per-kind", type=positive_int, default=None, metavar="N",
                        help="at most N real and N synthetic cases (per group with --balance group)")
    create.add_argument("--crop", choices=("common", "none"), default="common",
                        help="centre-crop all cases to one size so size cannot reveal them (default common)")
    create.add_argument("--scheme", default=None, help="class scheme of type-map masks (.png/.npy), default consep")
    create.add_argument("--seed", type=seed_int, default=None,
                        help="reproducible selection and reader orders (recorded in the key only; case ids and "
                             "which case is which are always secret random); default: random")
    create.add_argument("--key-out", default=None, metavar="FILE",
                        help="write the key here (mode 0600, outside STUDY) instead of the key folder "
                             "($HISTOGEN_KEY_DIR or ~/.local/share/napari-histogen/study-keys); keep it from the "
                             "readers")
    create.add_argument("--reencode", choices=("jpeg",), default=None,
                        help="pass every case through the same JPEG encoding (needed when some images were JPEG "
                             "and others not: JPEG traces would reveal them)")
    create.add_argument("--scale", choices=("resample", "refuse"), default="resample",
                        help="cases whose masks record different um/px: resample all to the coarsest (default) "
                             "or refuse")
    create.add_argument("--title", default=None, help="title shown to readers (must not reveal provenance)")
    create.add_argument("--out", required=True, metavar="STUDY", help="new study folder")
    create.set_defaults(func=cmd_study_create)

    status = sub.add_parser("status", help="answered cases per reader, without unblinding",
                            description="Progress of each reader (answered / cases, records, last activity) and "
                                        "any repaired answer logs. Reads no key.")
    status.add_argument("study", help="study folder")
    status.set_defaults(func=cmd_study_status)

    score = sub.add_parser("score", help="open napari to score the study as one reader",
                           description="Opens napari with the 'Histogen: reader study' dock. Keys: 1-9 and 0 (=10) "
                                       "score, Right/Enter next, Left previous, B/T/M/X criteria, H hide the mask. "
                                       "Each answer is on disk before the next case shows; closing resumes later.")
    score.add_argument("study", help="study folder")
    score.add_argument("--reader", required=True, help="your reader id (letters, digits, - and _)")
    score.add_argument("--token", default=None,
                       help="your reader token (shown when you first opened the study; needed to resume)")
    score.set_defaults(func=cmd_study_score)

    report = sub.add_parser(
        "report", help="unblind with the key: answers CSV, statistics, plots",
        description="Writes answers.csv (the answer that counts per reader and case), records.csv (audit trail), "
                    "realism per group and overall as mean ± sd (PathUp Table 5 layout) with Mann-Whitney U and "
                    "p, ROC AUC with a case-bootstrap 95% CI, accuracy at score >= threshold against chance "
                    "(binomial test), Wilcoxon for paired real/synthetic cases (same file stem), Krippendorff's "
                    "alpha between readers, criteria frequencies, summary.md/.json and PNG plots.",
    )
    report.add_argument("study", help="study folder")
    report.add_argument("--out", required=True, type=out_dir_arg, help="report folder")
    report.add_argument("--key", default=None, metavar="FILE",
                        help="the study key (default: the study's key in the key folder)")
    report.add_argument("--threshold", type=int, default=6, help="score from which an answer means 'real' (default 6)")
    report.add_argument("--bootstrap", type=positive_int, default=2000, metavar="N",
                        help="bootstrap resamples (default 2000)")
    report.add_argument("--seed", type=seed_int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    report.set_defaults(func=cmd_study_report)
    return study

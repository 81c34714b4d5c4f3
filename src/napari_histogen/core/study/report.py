"""Unblind a reader study with its key and write the answers, the statistics and the plots.

Outputs in the report folder:

- ``answers.csv``: the answer that counts per reader and case, with the key's columns
  (truth, group, source, engine, model, seed).
- ``records.csv``: every answer record, superseded ones included (the audit trail).
- ``realism_by_group.csv``: mean ± sd realism of real and synthetic cases per group and
  overall (PathUp Table 5 layout) with Mann-Whitney U, p, ROC AUC [95 % CI] and accuracy
  of "score >= threshold = real" against chance.
- ``realism_by_reader.csv``, ``paired.csv`` (Wilcoxon, when real and synthetic cases are
  paired), ``criteria.csv`` (image-with-mask studies), ``agreement.csv``.
- ``summary.md`` (all tables), ``summary.json`` (all numbers).
- ``realism_by_group.png``, ``realism_by_reader.png``, ``roc.png``, ``criteria.png``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CorruptFileError, HistogenInputError
from ..provenance import json_default, make_provenance
from .answers import read_answer_log
from .layout import (
    CRITERIA,
    KEY_FORMAT,
    SCORE_MAX,
    SCORE_MIN,
    answers_dir,
    check_reader_id,
    find_key_path,
    load_manifest,
)
from .stats import (
    accuracy_vs_chance,
    bootstrap_auc_ci,
    describe,
    krippendorff_alpha,
    mann_whitney,
    roc_points,
    wilcoxon_paired,
)

__all__ = ["StudyReport", "load_key", "collect_answers", "compute_report", "write_report", "OVERALL"]

OVERALL = "overall"
_KEY_COLUMNS = ("truth", "group", "source", "pair", "engine", "model", "seed")


@dataclass
class StudyReport:
    """The unblinded tables of a study.

    Attributes
    ----------
    answers : DataFrame
        One row per reader and case: the answer that counts, with the key's columns.
    records : DataFrame
        Every answer record (audit trail).
    by_group, by_reader, paired, criteria, agreement : DataFrame
        The summary tables (``paired`` and ``criteria`` may be empty).
    roc : dict
        ``'overall'`` and each reader -> (fpr, tpr, auc).
    notes : list of str
    settings : dict
    """

    answers: pd.DataFrame
    records: pd.DataFrame
    by_group: pd.DataFrame
    by_reader: pd.DataFrame
    paired: pd.DataFrame
    criteria: pd.DataFrame
    agreement: pd.DataFrame
    roc: dict
    notes: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def table5(self) -> pd.DataFrame:
        """The realism table in the layout of PathUp Table 5: group, real, synthetic (mean ± sd)."""
        return pd.DataFrame({
            "group": self.by_group["group"],
            "real": [_pm(m, s) for m, s in zip(self.by_group["real_mean"], self.by_group["real_sd"])],
            "synthetic": [_pm(m, s) for m, s in zip(self.by_group["synthetic_mean"], self.by_group["synthetic_sd"])],
        })

    def markdown(self) -> str:
        """All tables as Markdown (the content of ``summary.md``)."""
        return _markdown(self)


# -- inputs ------------------------------------------------------------------------------
def load_key(path, manifest: dict | None = None) -> dict:
    """Read an unblinding key and check that it belongs to the study of ``manifest``.

    Raises
    ------
    HistogenInputError
        No key file, not a key, or the key of another study.
    """
    path = Path(path)
    if not path.is_file():
        raise HistogenInputError(
            f"No study key at {path}. The report needs the key the study owner kept "
            "(STUDY.key.json next to the study folder unless it was written elsewhere); give it with --key."
        )
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"The study key {path} cannot be read as JSON ({err}).") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or not isinstance(key.get("cases"), dict):
        raise HistogenInputError(f"{path} is not a reader study key; give the key.json written with the study.")
    if manifest is not None:
        if key.get("study_id") != manifest.get("study_id") or set(key["cases"]) != set(manifest["cases"]):
            raise HistogenInputError(
                f"The key {path} belongs to another study (study id {key.get('study_id')}, this study "
                f"{manifest.get('study_id')}); give this study's key."
            )
    return key


def collect_answers(study, key: dict, manifest: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Every reader's answers, unblinded.

    A log appended twice (a sync merge) counts once: records are deduplicated by
    (reader, case, record number). Logs of readers the study does not list, and files
    whose name is no reader id (``r1 (conflicted copy).jsonl``), are left out and named
    in the notes; a damaged line is skipped and named, without blocking other readers.

    Returns
    -------
    answers : DataFrame
        The answer that counts per reader and case.
    records : DataFrame
        All answer records, oldest first per reader, with ``counts`` True for the final one.
    notes : list of str
        Logs and lines left out, and why.
    """
    manifest = manifest if manifest is not None else load_manifest(study)
    listed = set(manifest.get("readers") or {})
    open_study = not listed or bool(manifest.get("open_to_any_reader", False))
    folder = answers_dir(study)
    rows, notes, ignored = [], [], []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            reader = check_reader_id(path.stem)
        except HistogenInputError:
            ignored.append(path.name)
            continue
        if not open_study and reader not in listed:
            ignored.append(path.name)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            contents = read_answer_log(path, tolerant=True)
        notes += contents.warnings
        seen, unique = set(), []
        for a in contents.answers:
            if (a.case, a.seq) in seen:
                continue
            seen.add((a.case, a.seq))
            unique.append(a)
        if len(unique) < len(contents.answers):
            notes.append(f"{path.name}: {len(contents.answers) - len(unique)} repeated records (the same record "
                         "twice, e.g. a synchronised copy appended) were counted once.")
        unknown = sorted({a.case for a in unique if a.case not in key["cases"]})
        if unknown:
            notes.append(f"{path.name}: answers for {len(unknown)} cases this study does not have were left out.")
        unique = [a for a in unique if a.case in key["cases"]]
        final: dict = {}
        for a in unique:  # the last record (highest record number) counts
            if a.case not in final or a.seq >= final[a.case]:
                final[a.case] = a.seq
        for a in unique:
            meta = key["cases"][a.case]
            row = {"reader": contents.reader, "case": a.case, "index": a.index, "realism": a.realism,
                   "seq": a.seq, "time_utc": a.time_utc, "elapsed_s": a.elapsed_s, "comment": a.comment,
                   "counts": final[a.case] == a.seq}
            for k, _ in CRITERIA:
                row[k] = None if a.criteria is None else a.criteria.get(k)
            for col in _KEY_COLUMNS:
                row[col] = meta.get(col)
            rows.append(row)
    if ignored:
        notes.append(f"Left out {len(ignored)} answer files of no reader of this study: {', '.join(ignored)}.")
    columns = ["reader", "case", "index", "realism", *[k for k, _ in CRITERIA], "comment", *_KEY_COLUMNS,
               "seq", "time_utc", "elapsed_s", "counts"]
    records = pd.DataFrame(rows, columns=columns)
    if records.empty:
        return pd.DataFrame(columns=columns[:-1]), records, notes
    answers = records[records["counts"].astype(bool)].drop(columns=["counts"]).reset_index(drop=True)
    return answers, records, notes


# -- statistics --------------------------------------------------------------------------
def compute_report(answers: pd.DataFrame, *, threshold: int = 6, n_boot: int = 2000, seed: int = 0,
                   criteria_keys=None) -> StudyReport:
    """The summary tables from unblinded answers (see :func:`collect_answers`).

    Parameters
    ----------
    answers : DataFrame
        Columns ``reader``, ``case``, ``realism``, ``truth`` ('real'/'synthetic'),
        ``group``, optionally ``pair`` and the criteria.
    threshold : int
        Score from which an answer counts as "real" for the accuracy.
    n_boot : int
        Bootstrap resamples for the AUC CIs.
    seed : int
        Bootstrap seed.
    criteria_keys : list of str, optional
        Criteria to tabulate (image-with-mask studies).
    """
    if isinstance(threshold, bool) or int(threshold) != threshold or not SCORE_MIN < threshold <= SCORE_MAX:
        raise HistogenInputError(f"The threshold for 'real' must be a whole score {SCORE_MIN + 1}-{SCORE_MAX}, "
                                 f"not {threshold}.")
    threshold = int(threshold)
    if answers.empty:
        raise HistogenInputError("No reader has answered yet; the report needs at least one answer.")
    bad = set(answers["truth"]) - {"real", "synthetic"}
    if bad:
        raise HistogenInputError(f"The key marks cases as {sorted(bad)}; expected 'real' or 'synthetic'.")
    df = answers.copy()
    df["group"] = df["group"].fillna("all").astype(str)
    groups = sorted(df["group"].unique())
    notes = []

    def row_for(label, sub, boot_seed):
        real = sub.loc[sub.truth == "real", "realism"].to_numpy(float)
        syn = sub.loc[sub.truth == "synthetic", "realism"].to_numpy(float)
        mw = mann_whitney(real, syn)
        lo, hi = bootstrap_auc_ci(_per_case(sub, "real"), _per_case(sub, "synthetic"),
                                  n_boot=n_boot, seed=boot_seed)
        acc = accuracy_vs_chance(real, syn, threshold=threshold)
        dr, ds = describe(real), describe(syn)
        return {
            "group": label,
            "n_real_cases": int(sub.loc[sub.truth == "real", "case"].nunique()),
            "n_synthetic_cases": int(sub.loc[sub.truth == "synthetic", "case"].nunique()),
            "n_real": dr["n"], "real_mean": dr["mean"], "real_sd": dr["sd"],
            "n_synthetic": ds["n"], "synthetic_mean": ds["mean"], "synthetic_sd": ds["sd"],
            "U": mw["U"], "p_mannwhitney": mw["p"], "auc": mw["auc"], "auc_ci_low": lo, "auc_ci_high": hi,
            "accuracy": acc["accuracy"], "n_correct": acc["correct"], "p_binomial": acc["p"],
        }

    rows = [row_for(g, df[df.group == g], seed + i) for i, g in enumerate(groups)] if len(groups) > 1 else []
    rows.append(row_for(OVERALL, df, seed))
    by_group = pd.DataFrame(rows)

    reader_rows = []
    roc = {OVERALL: _roc(df)}
    for i, (reader, sub) in enumerate(sorted(df.groupby("reader"), key=lambda t: t[0])):
        row = row_for(reader, sub, seed + 1000 + i)
        row["reader"] = row.pop("group")
        reader_rows.append(row)
        roc[reader] = _roc(sub)
    by_reader = pd.DataFrame(reader_rows)
    by_reader = by_reader[["reader"] + [c for c in by_reader.columns if c != "reader"]]

    paired = _paired_table(df, groups)
    agreement = _agreement_table(df, threshold)
    crit = _criteria_table(df, groups, criteria_keys or [])
    if df["reader"].nunique() > 1:
        notes.append("p-values in the group rows treat every rating as independent; with several readers, the "
                     "per-reader rows and the case-resampled AUC intervals are the stricter view.")
    settings = {"threshold": threshold, "n_boot": n_boot, "bootstrap_seed": seed, "readers": sorted(df.reader.unique()),
                "n_answers": int(len(df))}
    return StudyReport(answers=answers, records=pd.DataFrame(), by_group=by_group, by_reader=by_reader,
                       paired=paired, criteria=crit, agreement=agreement, roc=roc, notes=notes, settings=settings)


def _per_case(sub: pd.DataFrame, truth: str) -> list:
    part = sub[sub.truth == truth]
    return [g["realism"].to_numpy(float) for _, g in part.groupby("case")]


def _roc(sub: pd.DataFrame):
    real = sub.loc[sub.truth == "real", "realism"].to_numpy(float)
    syn = sub.loc[sub.truth == "synthetic", "realism"].to_numpy(float)
    fpr, tpr, _ = roc_points(real, syn)
    return fpr, tpr, mann_whitney(real, syn)["auc"]


def _paired_table(df: pd.DataFrame, groups) -> pd.DataFrame:
    if "pair" not in df or df["pair"].isna().all():
        return pd.DataFrame()
    per_case = df.dropna(subset=["pair"]).groupby(["group", "pair", "truth"])["realism"].mean().unstack("truth")
    if "real" not in per_case or "synthetic" not in per_case:
        return pd.DataFrame()
    per_case = per_case.dropna()
    rows = []
    labels = [g for g in groups if g in per_case.index.get_level_values(0)] if len(groups) > 1 else []
    for label in labels + [OVERALL]:
        part = per_case if label == OVERALL else per_case.xs(label, level="group")
        res = wilcoxon_paired(part["real"], part["synthetic"])
        rows.append({"group": label, "n_pairs": res["n_pairs"], "real_mean": float(part["real"].mean()),
                     "synthetic_mean": float(part["synthetic"].mean()), "mean_difference": res["mean_difference"],
                     "W": res["W"], "p_wilcoxon": res["p"]})
    return pd.DataFrame(rows)


def _agreement_table(df: pd.DataFrame, threshold: int) -> pd.DataFrame:
    matrix = df.pivot_table(index="reader", columns="case", values="realism", aggfunc="last")
    calls = (matrix >= threshold).astype(float).where(matrix.notna())
    n_shared = int((matrix.notna().sum(axis=0) >= 2).sum())
    return pd.DataFrame([
        {"measure": "Krippendorff's alpha (ordinal), realism 1-10", "value": krippendorff_alpha(matrix.to_numpy()),
         "n_readers": int(matrix.shape[0]), "n_cases_rated_twice": n_shared},
        {"measure": f"Krippendorff's alpha (nominal), call 'real' at >= {threshold}",
         "value": krippendorff_alpha(calls.to_numpy(), level="nominal", value_domain=[0.0, 1.0]),
         "n_readers": int(matrix.shape[0]), "n_cases_rated_twice": n_shared},
    ])


def _criteria_table(df: pd.DataFrame, groups, keys) -> pd.DataFrame:
    keys = [k for k in keys if k in df and df[k].notna().any()]
    if not keys:
        return pd.DataFrame()
    rows = []
    labels = groups if len(groups) > 1 else []
    for label in labels + [OVERALL]:
        part = df if label == OVERALL else df[df.group == label]
        for truth in ("real", "synthetic"):
            sub = part[(part.truth == truth) & part[keys[0]].notna()]
            row = {"group": label, "truth": truth, "n": int(len(sub))}
            for k in keys:
                row[f"{k}_pct"] = 100.0 * float(sub[k].astype(bool).mean()) if len(sub) else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


# -- writing -------------------------------------------------------------------------------
def write_report(study, out, *, key_path=None, threshold: int = 6, n_boot: int = 2000, seed: int = 0,
                 plots: bool = True) -> StudyReport:
    """Unblind a study and write its report folder.

    Parameters
    ----------
    study : str or Path
        Study folder.
    out : str or Path
        Report folder (created; files in it are replaced).
    key_path : str or Path, optional
        The study key; default: the study's key in the key folder (``find_key_path``).
    threshold, n_boot, seed
        See :func:`compute_report`.
    plots : bool
        Also write the PNG plots.

    Returns
    -------
    StudyReport
        With ``files``: role -> path.

    Raises
    ------
    HistogenInputError
        Not a study, no or a wrong key, no answers yet.
    """
    out = Path(out)
    _check_report_folder(out)
    manifest = load_manifest(study)
    key = load_key(key_path if key_path is not None else find_key_path(study, str(manifest.get("study_id", ""))),
                   manifest)
    answers, records, log_notes = collect_answers(study, key, manifest)
    criteria_keys = [c["key"] for c in manifest.get("criteria") or []]
    report = compute_report(answers, threshold=threshold, n_boot=n_boot, seed=seed, criteria_keys=criteria_keys)
    report.records = records
    report.notes = log_notes + report.notes
    report.settings.update(study_id=manifest.get("study_id"), mode=manifest.get("mode"),
                           n_cases=len(manifest["cases"]))
    tmp = out.resolve().parent / f".{out.name}.writing-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        written = _write_report_files(report, answers, records, tmp, threshold, n_boot, seed, plots)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for role, path in written.items():  # every file is complete before any is moved into place
            os.replace(path, out / path.name)
            files[role] = out / path.name
    except OSError as err:
        raise HistogenInputError(f"Could not write the report to {out} ({err.strerror or err}); free disk space "
                                 "or choose another folder.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.files = files
    return report


def _check_report_folder(out: Path) -> None:
    """Before any work: the report folder is a folder (or can be made) where we may write."""
    if out.exists() and not out.is_dir():
        raise HistogenInputError(f"{out} is a file, not a folder; give a folder for the report.")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise HistogenInputError(f"The folder {parent} does not exist; create it first or choose another --out.")
    target = out if out.is_dir() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise HistogenInputError(f"Cannot write in {target}; choose a report folder where you may write.")


def _write_report_files(report: StudyReport, answers, records, out: Path, threshold, n_boot, seed,
                        plots: bool) -> dict:
    files = {}

    def csv(name, frame):
        if frame is not None and not frame.empty:
            path = out / name
            frame.to_csv(path, index=False, float_format="%.6g", encoding="utf-8", errors="backslashreplace")
            files[name.rsplit(".", 1)[0]] = path

    csv("answers.csv", answers)
    csv("records.csv", records)
    csv("realism_by_group.csv", report.by_group)
    csv("realism_by_reader.csv", report.by_reader)
    csv("paired.csv", report.paired)
    csv("criteria.csv", report.criteria)
    csv("agreement.csv", report.agreement)
    (out / "summary.md").write_text(report.markdown(), encoding="utf-8", errors="backslashreplace")
    files["summary"] = out / "summary.md"
    summary = {
        "settings": report.settings,
        "notes": report.notes,
        "realism_by_group": report.by_group.to_dict(orient="records"),
        "realism_by_reader": report.by_reader.to_dict(orient="records"),
        "paired": report.paired.to_dict(orient="records"),
        "criteria": report.criteria.to_dict(orient="records"),
        "agreement": report.agreement.to_dict(orient="records"),
        "provenance": make_provenance("histogen study report", threshold=threshold, n_boot=n_boot, seed=seed),
    }
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, default=json_default),
                                      encoding="utf-8")
    files["summary_json"] = out / "summary.json"
    if plots:
        from .plots import write_plots

        files.update(write_plots(report, out))
    return files


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# -- markdown -------------------------------------------------------------------------------
def _pm(mean, sd) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.2f} ± {sd:.2f}" if np.isfinite(sd) else f"{mean:.2f}"


def _p(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _f(x, digits=2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _auc_cell(r) -> str:
    return f"{_f(r['auc'])} [{_f(r['auc_ci_low'])}, {_f(r['auc_ci_high'])}]"


def _markdown(rep: StudyReport) -> str:
    s = rep.settings
    thr = s.get("threshold", 6)
    out = [f"# Reader study report{' ' + s['study_id'] if s.get('study_id') else ''}", ""]
    out.append(f"{s.get('n_answers', 0)} answers from {len(s.get('readers', []))} reader(s) "
               f"({', '.join(s.get('readers', []))}). Realism 1 = synthetic, 10 = real. "
               f"AUC: probability that a real case scores above a synthetic one (0.5 = indistinguishable), "
               f"95 % CI from {s.get('n_boot')} case bootstrap resamples. Accuracy: score >= {thr} called real, "
               "exact binomial test against chance (0.5).")
    out += ["", "## Realism by group (PathUp Table 5 layout)", ""]
    out.append(_table(
        ["Group", "Real", "Synthetic", "n (real/synth.)", "U", "p (Mann-Whitney)", "AUC [95 % CI]",
         f"Accuracy (>= {thr})", "p (binomial)"],
        [[r["group"], _pm(r["real_mean"], r["real_sd"]), _pm(r["synthetic_mean"], r["synthetic_sd"]),
          f"{r['n_real']}/{r['n_synthetic']}", _f(r["U"], 1), _p(r["p_mannwhitney"]), _auc_cell(r),
          _f(r["accuracy"]), _p(r["p_binomial"])] for _, r in rep.by_group.iterrows()]))
    out += ["", "## Realism by reader", ""]
    out.append(_table(
        ["Reader", "Real", "Synthetic", "U", "p (Mann-Whitney)", "AUC [95 % CI]", f"Accuracy (>= {thr})",
         "p (binomial)"],
        [[r["reader"], _pm(r["real_mean"], r["real_sd"]), _pm(r["synthetic_mean"], r["synthetic_sd"]),
          _f(r["U"], 1), _p(r["p_mannwhitney"]), _auc_cell(r), _f(r["accuracy"]), _p(r["p_binomial"])]
         for _, r in rep.by_reader.iterrows()]))
    if not rep.paired.empty:
        out += ["", "## Paired cases (Wilcoxon signed-rank on per-case mean scores)", ""]
        out.append(_table(["Group", "Pairs", "Real", "Synthetic", "Mean difference", "W", "p"],
                          [[r["group"], r["n_pairs"], _f(r["real_mean"]), _f(r["synthetic_mean"]),
                            _f(r["mean_difference"]), _f(r["W"], 1), _p(r["p_wilcoxon"])]
                           for _, r in rep.paired.iterrows()]))
    out += ["", "## Inter-reader agreement", ""]
    out.append(_table(["Measure", "Value", "Readers", "Cases rated by >= 2"],
                      [[r["measure"], _f(r["value"], 3), r["n_readers"], r["n_cases_rated_twice"]]
                       for _, r in rep.agreement.iterrows()]))
    if not rep.criteria.empty:
        keys = [c[:-4] for c in rep.criteria.columns if c.endswith("_pct")]
        texts = dict(CRITERIA)
        out += ["", "## Mask consistency (% of answers ticking each criterion)", ""]
        out.append(_table(["Group", "Truth", "n"] + [texts.get(k, k) for k in keys],
                          [[r["group"], r["truth"], r["n"]] + [_f(r[f"{k}_pct"], 1) for k in keys]
                           for _, r in rep.criteria.iterrows()]))
    if rep.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in rep.notes]
    return "\n".join(out) + "\n"

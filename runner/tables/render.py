"""Write table lines as Markdown (printed and saved), CSV (every number, full precision) and LaTeX."""

from __future__ import annotations

import csv
from pathlib import Path

from runner.tables.aggregate import Line, fmt
from runner.tables.collect import Collection
from runner.tables.facts import FACTS

STATUS_MARK = {"ok": "ok", "off": "**off**", "no paper value": "ours only", "no tolerance": "no tolerance",
               "no reference": "no reference run", "metric not found": "**metric not found**",
               "unverified": "no flag: paper number not checked in the paper's text"}


def ours_text(line: Line) -> str:
    if line.status == "null":
        return line.null_means or "null"
    if line.mean is None:
        return "—"
    return fmt(line.mean) + (f" ± {fmt(line.std)}" if line.std is not None else "")


def delta_text(line: Line) -> str:
    d = line.delta
    return "" if d is None else f"{d:+.2f}"


def metric_text(line: Line) -> str:
    unit = "" if line.scale == 1 else f" ×{line.scale:g}"
    if line.relative_to:
        return f"{line.metric} (% of ref)"
    return line.metric + unit


def status_text(line: Line, commands: dict[str, int] | None = None) -> str:
    """The status cell; `commands` numbers the re-run commands of committed rows (listed under the table)."""
    if line.status == "missing":
        text = f"missing: `{line.command}`"
    elif line.status == "not comparable":
        text = f"no flag: {line.comparable}"
    elif line.status == "null":
        text = f"{line.null_means or 'null'} in every run (results.json holds null: see the recipe's README)"
    else:
        text = STATUS_MARK.get(line.status, line.status)
    source = "committed" if line.committed else "earlier table"
    if line.earlier_seeds:
        text += f" · seed{'s' if len(line.earlier_seeds) > 1 else ''} {', '.join(line.earlier_seeds)} from the {source}"
    elif line.earlier:
        text += f" · {source}"
        if line.committed and commands and line.command in commands:
            text += f" [r{commands[line.command]}]"
    extra = [f"{line.failed} failed" if line.failed else "", f"{line.running} running" if line.running else ""]
    extra = ", ".join(e for e in extra if e)
    return f"{text} ({extra}, excluded)" if extra else text


def summary(found: Collection, lines: list[Line] = ()) -> list[str]:
    c = found.counts
    done = c.get("completed", 0)
    others = {k: v for k, v in sorted(c.items()) if k != "completed"}
    roots = ", ".join(str(r) + ("" if r.is_dir() else " (does not exist yet)") for r in found.roots)
    text = f"{done} completed run(s) in {len(found.groups)} setting(s) under {roots}"
    if others:
        text += "; excluded: " + ", ".join(f"{v} {k}" for k, v in others.items())
    if found.duplicates:
        text += f"; {found.duplicates} older duplicate(s) of a setting and seed ignored"
    kept = sum(1 for line in lines if line.earlier and not line.earlier_seeds)
    if kept:
        text += f"; {kept} row(s) from the {'committed' if all(row.committed for row in lines if row.earlier) else 'earlier'} table"
    return [text + "."]


def markdown(title: str, lines: list[Line], others: list[Line], found: Collection) -> str:
    sources = list(dict.fromkeys(line.source for line in lines if line.source))
    show_variant = any(line.variant for line in lines)
    head = ["setting", *(["variant"] if show_variant else []), "metric", "ours (mean ± std)", "n", "paper", "Δ",
            "tol", "status"]
    rows = []
    # committed rows (no run here): each names the command that re-runs it, numbered [r1] ... under the table
    commands = {c: i for i, c in enumerate(dict.fromkeys(
        line.command for line in lines if line.committed and line.earlier and not line.earlier_seeds and line.command), 1)}
    for line in lines:
        paper = fmt(line.paper, 1 if line.paper is not None and round(line.paper, 1) == line.paper else 2)
        if line.source and paper:
            paper += f" [{sources.index(line.source) + 1}]"
        rows.append([line.label, *([line.variant] if show_variant else []), metric_text(line), ours_text(line),
                     str(line.n) if line.n else "", paper, delta_text(line), fmt(line.tolerance, 1),
                     status_text(line, commands)])
    out = [f"## {title}", "", *summary(found, lines)]
    if lines:
        out += ["", *table(head, rows)]
    if sources:
        out += ["", *(f"[{i}] {s}" for i, s in enumerate(sources, 1))]
    relative = [line for line in lines if line.relative_to and line.reference]
    if relative:
        out += ["", "Relative rows (ours = 100 × our metric / our reference run's, per seed):"]
        out += [f"- {line.label}: reference {line.reference}; absolute {fmt(line.absolute, 4)}" for line in relative]
    earlier = list(dict.fromkeys(line.earlier for line in lines if line.earlier and not line.committed))
    if earlier:
        out += ["", f"`earlier table`: numbers kept from {', '.join(map(shown, earlier))} (`--keep-earlier`): "
                    "those runs are not under the roots searched here; Δ and status use today's expected.csv. "
                    "`seeds … from the earlier table`: the seeds of the same setting (same config fingerprint) that "
                    "were not run again here are added to today's."]
    committed = list(dict.fromkeys(line.earlier for line in lines if line.earlier and line.committed))
    if committed:
        out += ["", f"`committed`: no run of the row under the roots searched here; its numbers are the recipe's "
                    f"committed table ({', '.join(map(shown, committed))}); Δ and status use today's expected.csv, and "
                    "a run made here replaces the row (`--no-committed`: runs here only). Re-run a row with:"]
        out += [f"- [r{i}] `{c}`" for c, i in commands.items()]
    unflagged = [line for line in lines if line.status in ("unverified", "not comparable")]
    if unflagged:
        out += ["", "No flag: a paper number gets ok/off only when it was checked in the paper's text (expected.csv "
                    "`verified`) and measures what we measure (`comparable`: same task, model family and metric); "
                    "otherwise the table shows it and Δ with the reason."]
    # one note per expected.csv row, however many variants (seeds-apart settings) the row matched
    notes = list(dict.fromkeys(f"- {line.label}: {line.note}" for line in lines if line.note))
    if notes:
        out += ["", "Notes:", *notes]
    if others:
        out += ["", "Settings found but not in expected.csv:" if lines else "Settings found:", ""]
        out += table(["setting", "metric", "ours (mean ± std)", "n"],
                     [[o.label, metric_text(o), ours_text(o), str(o.n)] for o in others])
    bad = [r for r in found.incomplete]
    if bad:
        out += ["", "Excluded runs (not completed):"]
        for r in bad[:20]:
            error = str(r.results.get("error") or "")[:120]
            out.append(f"- {r.status}: {shown(r.path)}" + (f" — {error}" if error else ""))
        if len(bad) > 20:
            out.append(f"- … and {len(bad) - 20} more")
    return "\n".join(out) + "\n"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


CSV_COLUMNS = ["label", "variant", "metric", "scale", "mean", "std", "n", "seeds", "paper", "delta", "tolerance",
               "flag", "status", "relative_to", "reference", "absolute", "failed", "running", "source", "note",
               "command", "settings", "run_dirs", "x", "earlier", "values", "setting", "verified", "comparable",
               "null_means", "point", "committed", *FACTS]


def write_csv(path: Path, lines: list[Line], others: list[Line]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for line in [*lines, *others]:
            writer.writerow([
                line.label, line.variant, line.metric, f"{line.scale:g}", _num(line.mean), _num(line.std), line.n,
                " ".join(map(str, line.seeds)), _num(line.paper), _num(line.delta), _num(line.tolerance),
                int(line.flagged), line.status, line.relative_to, line.reference, _num(line.absolute), line.failed,
                line.running, line.source, line.note, line.command if line.status == "missing" else "",
                settings_text(line.settings), " ".join(map(shown, line.run_dirs)),
                _num(line.x), shown(line.earlier) if line.earlier else "", " ".join(f"{seed}:{v!r}" for seed, v in line.values.items()),
                line.setting_key, "yes" if line.verified else ("no" if line.paper is not None else ""),
                line.comparable, line.null_means, line.point, int(line.committed),
                *(_num(line.facts.get(k)) for k in FACTS),
            ])


def settings_text(settings: dict[str, str]) -> str:
    """An expected row's settings as the CSV's `settings` column holds them (earlier.py matches on it)."""
    return ";".join(f"{k}={v}" for k, v in settings.items())


def shown(path: str | Path) -> str:
    """A run directory as written into tables: relative to the working directory when it is under it,
    so that a table committed beside its recipe does not carry one machine's absolute paths."""
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex(text: str) -> str:
    escaped = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace("×", r"$\times$").replace("±", r"$\pm$").replace("—", "--").replace("†", r"$^\dagger$")


def latex(title: str, lines: list[Line]) -> str:
    """A booktabs table: setting, metric, ours (mean ± std, n), paper, Δ; flagged Δ in bold."""
    out = [f"% {tex(title)}: generated by `python -m runner.tables`; needs \\usepackage{{booktabs}}",
           r"\begin{tabular}{llrrrr}", r"\toprule",
           r"Setting & Metric & Ours & $n$ & Paper & $\Delta$ \\", r"\midrule"]
    for line in lines:
        ours = "--" if line.mean is None else f"${fmt(line.mean)}" + (
            f" \\pm {fmt(line.std)}$" if line.std is not None else "$")
        delta = delta_text(line)
        delta = f"\\textbf{{{delta}}}" if line.flagged else delta
        label = line.label + (f" ({line.variant})" if line.variant else "")
        out.append(f"{tex(label)} & {tex(metric_text(line))} & {ours} & {line.n or ''} & "
                   f"{fmt(line.paper, 1) if line.paper is not None else '--'} & {delta} \\\\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"

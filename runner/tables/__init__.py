"""Paper tables: our runs (mean ± std over seeds) next to the published numbers, with Δ and flags.

    python -m runner.tables recipes/<paper>           # the recipe's runs vs its expected.csv
    python -m runner.tables outputs/<dir> [--out DIR] # any folder of runs: one line per setting
    make table RECIPE=<paper>
    python -m runner.tables.compare recipes/ --task glue/sst2   # every method of a task: runner/tables/compare.py

Prints Markdown and writes <name>.md, <name>.csv (every number at full precision), <name>.tex (booktabs)
and one PNG per declared plot into --out (default: <the recipe's first output root>/tables/, under outputs/:
a recipe's own results/ change only when --out names them).

Committed rows. A row with no run here shows the recipe's committed table (recipes/<paper>/results/<paper>.csv),
marked `committed` with the command that re-runs it; a run made here replaces the row it covers, and adds its
seeds to the committed ones of the very same setting (runner/tables/earlier.py). `--no-committed` shows the
runs here only; `--keep-earlier` takes the earlier numbers from the table already at --out instead.

Finding runs. A recipe folder holds experiment files (recipes/<paper>/<table>.yaml, selected with
`+experiment=<paper>/<table>`) that route their runs with `paths.output_root` (e.g.
`${oc.env:PLM_OUTPUT_ROOT,outputs}/<paper>`); the tool reads that key from every YAML of the folder and
searches those roots (or the folders given with --runs) for results.json. Only status=completed runs
count; failed, running and unreadable ones are counted, listed and excluded. Runs are grouped by setting =
their resolved config without seed, hardware, logger, paths, data_dir, force: the runs of one setting
differ only in their seed. A seed completed twice counts once (the later run).

expected.csv schema (one row per published number; `#` lines are comments; empty cell = not given):

    <dotted config key>  any column not named below is a setting: the row takes the runs whose
                         results.json config has this value at this key (task.name, model.name,
                         method.ratio, train.lr, ...). Cells are compared as numbers when both are numbers,
                         as true/false/null/[lists] when written so, else as text.
    metric      required. Dotted path of the number in results.json: looked up under `metrics` first
                (accuracy, pearson), then from the top (best.accuracy, ratios.0.25.accuracy,
                parameters.trainable). Keys may contain dots; the longest matching key wins.
    value       the published number, as printed in the paper. Empty = no published number (ours only).
    scale       ours x scale = the paper's units. Default: 100 for fraction metrics (accuracy, f1,
                matthews_correlation, pearson, spearmanr, exact_match; results.json holds 0.91, papers
                print 91.0) and for relative rows; 1 for anything else (loss, perplexity, seconds).
    tolerance   |ours - paper| above this (in the paper's units) is flagged `off`. Empty = not checked.
    relative_to the row is relative (value = % of a reference, e.g. of the paper's dense model): ours is
                shown as scale x ours / our reference, per seed. The reference is the row's setting
                changed by `key=value;key=value` (`key=` drops a key; `metric=` names the reference's
                metric). Examples: `method.name=finetune;method.ratio=` (our dense run of the same task
                and model), `metric=accuracy` (the same runs' dense accuracy).
    label       row name in the table (default: the setting values).
    source      where the number is printed: paper, table/figure id (or repository file and commit).
    note        free text shown under the table (what differs from the paper's setting).
    command     arguments of `python -m runner -m` that produce the row's runs (e.g.
                `+experiment=finetune/stsb data_dir=../shared/data`); shown for missing cells. Default:
                the settings as overrides (model.name=x becomes model=x, likewise method and task).
    plot        name of a figure this row is a point of (one PNG per name).
    x           its x value: a number, or a dotted results.json path (e.g. parameters.trainable) whose
                mean over the runs is used.
    x_label     x axis label of the figure.
    series      line of the figure the point belongs to (default: the metric). A series whose points are one
                setting swept along one key is a curve (drawn with a line); points of different settings (ten
                PEFT methods) are drawn apart, each labelled.
    verified    yes: the paper's value was checked in the paper's own text (or the authors' table); no: it
                was not (a secondary summary, a model card). Empty = no.
    comparable  yes, or why the paper's number is not ours: "other task: MNLI-m", "other model: T5-Large",
                "other metric: FLOPs ratio". Required with a `value`.
    null_means  what a null result means for the metric, shown in place of a number (e.g. "never reached").
    point       the setting(s) of the cross-method comparison (runner.tables.compare) this row describes;
                "a|b" when one measurement serves several (the same student shape). What the row gives
                the point follows from its metric: the task metric, a relative row (% of dense),
                speed.1x64.* / speed.32x128.*, trainable.percent, parameters.total, train.train_runtime.

Flags: only a verified and comparable paper value with a tolerance gets ok/off; the others show the paper's
number and Δ with the reason instead.
Statuses: ok (|Δ| <= tolerance), off (|Δ| > tolerance), missing (no completed run: the command is
shown), metric not found (runs exist, the metric path finds nothing), null (every run writes the metric as
null: a measure without a value, shown as `null_means`), no paper value, unverified, not comparable (its
reason), no tolerance, no reference (a relative row whose reference runs are missing). `--check` exits 1 on
off/missing.
Besides the numbers, each CSV row keeps the mean over its runs of what runner.tables.facts reads from
results.json (speedups, parameters, trainable share, size on disk, training time), so a committed table
carries what the comparison needs.
When several settings match one row (e.g. two learning rates), each gets its own line and a `variant`
column names the keys that tell them apart.
"""

from runner.tables.table import Table, make_table

__all__ = ["Table", "make_table"]

"""What `anynet sweep` prints of a sweep's results: the table (at the end of a sweep, and again
with `--summary OUT`) and the one-line warning for lines of results.jsonl that are not run
records. Reading and summarising are anynet.sweep's; this module only prints."""

from __future__ import annotations

import sys
from pathlib import Path


def print_summary(folder: Path, plot: Path | None) -> int:
    from anynet.errors import UserError
    from anynet.sweep import RESULTS_NAME

    path = folder / RESULTS_NAME
    if not path.is_file():
        raise UserError(f"--summary {folder}: no {RESULTS_NAME} there; name the --out folder of "
                        "an anynet sweep")
    skipped: list = []
    records, _ = read(path, skipped)
    warn_skipped(path, skipped, ("the summary leaves it", "the summary leaves them"), "out")
    print_table(records, plot, say=print)
    return 0


def read(path: Path, skipped: list) -> tuple[list, int]:
    """`anynet.sweep.read_results` of what the summary and a re-run need; UserError for a file
    that cannot be read (a folder of that name, no permission)."""
    from anynet.errors import UserError
    from anynet.fileio import reason
    from anynet.sweep import SUMMARY_FIELDS, read_results

    try:
        return read_results(path, skipped, keep=SUMMARY_FIELDS)
    except OSError as e:
        raise UserError(f"cannot read {path} ({reason(e)}); is it this sweep's results file?") \
            from None


def warn_skipped(path: Path, skipped: list, subject: tuple[str, str], rest: str) -> None:
    """One line on stderr for the lines of results.jsonl that are not run records; `subject`
    (singular, plural) and `rest` say what follows for them."""
    if not skipped:
        return
    number, problem = skipped[0]
    many = len(skipped) > 1
    more = f" and {len(skipped) - 1} more" if many else ""
    print(f"anynet sweep: warning: skipped {len(skipped)} line{'s' if many else ''} of {path} "
          f"that {'are not run records' if many else 'is not a run record'} (line {number}: "
          f"{problem}{more}); {subject[many]} {rest}; the file is left as it is",
          file=sys.stderr)


def print_table(records: list, plot: Path | None, say) -> None:
    from anynet.sweep import format_summary, summarize

    rows, ranked_by = summarize(records)
    say(format_summary(rows, ranked_by))
    if plot is not None and rows:
        from anynet.plots import plot_sweep

        plot_sweep(records, plot)
        say(f"plot written to {plot}")

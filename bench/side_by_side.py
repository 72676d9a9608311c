"""What compare_step.py and onnx_compare.py share: the last JSON record of a command's output, and
the Markdown table of medians over alternated rounds with the per-round ratios."""
import json
import statistics


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit("no JSON in output:\n" + text[-2000:])


def print_table(rows, ours_name, theirs_name, theirs_short):
    """rows: (config, batch, threads, ours images/s per round, theirs per round)."""
    print(f"| config | batch | threads | {ours_name} img/s | {theirs_name} img/s | ours / {theirs_short} (per round) |")
    print("|---|---|---|---|---|---|")
    for config, batch, t, ours, theirs in rows:
        ratios = ", ".join("%.2f" % (x / y) for x, y in zip(ours, theirs))
        print(f"| {config} | {batch} | {t} | {statistics.median(ours):.2f} | {statistics.median(theirs):.2f} | "
              f"{statistics.median(ours) / statistics.median(theirs):.2f} ({ratios}) |")

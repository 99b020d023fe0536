"""The results table: rows = widths, columns = datasets, with Params and MACs (the paper's Table 6)."""
from __future__ import annotations

SHORT = {"cifar10": "C-10", "cifar100": "C-100", "flowers102": "Flowers", "pets": "Pets",
         "dtd": "DTD", "digits": "Digits"}


def human(n: float | None, unit: str = "") -> str:
    """23512345 -> '23.51M'; 4.1e9 -> '4.10G'."""
    if n is None:
        return "–"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def markdown_table(results: dict) -> str:
    """Markdown for ``results.json``'s content (see tools/linear_probe.py)."""
    names = list(results["datasets"])
    net = results.get("source", {}).get("model", {}).get("arch", "?")
    metric_note = ", ".join(f"{SHORT.get(n, n)}: {results['metrics'][n]}" for n in names)
    header = ["Net", "Width", "Params", "MACs"] + [SHORT.get(n, n) for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in sorted(results["rows"], key=lambda r: -r["width"]):
        cells = [net, f"{row['width']:g}x", human(row.get("params")), human(row.get("macs"))]
        for n in names:
            entry = row["datasets"].get(n)
            cells.append("–" if entry is None else f"{entry['value']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    macs_from = sorted({r.get("macs_from", "?") for r in results["rows"]})
    caption = (f"Linear probe ({results['protocol']} protocol, {results['image_size']}px input; "
               f"metrics: {metric_note}; MACs from {', '.join(macs_from)}).")
    return caption + "\n\n" + "\n".join(lines) + "\n"

"""Figures, the printed table, the JSON file and the PNG chart of ratios.

A figure holds, per contender, the values of its runs (or an `error` saying why the
contender could not run here). Ratios are always bae's median over the peer's median,
in the figure's own unit; `better` says which direction is good, and a target names
either a ratio to one peer or an absolute bound on bae's median.
"""
import json
import os
import statistics

BAE = "bae"


class Figure:
    def __init__(self, fid, title, unit, better="higher", targets=(), note=""):
        self.id, self.title, self.unit, self.better = fid, title, unit, better
        self.targets = list(targets)  # ("ratio", peer, op, x) | ("abs", op, x)
        self.note = note
        self.values = {}  # contender -> [values]
        self.errors = {}  # contender -> reason
        self.extra = {}

    def add(self, who, value):
        self.values.setdefault(who, []).append(value)

    def fail(self, who, reason):
        self.errors[who] = reason.strip().splitlines()[0][:110] if reason.strip() else "failed"

    def median(self, who):
        v = self.values.get(who)
        return statistics.median(v) if v else None

    def ratio(self, peer):
        a, b = self.median(BAE), self.median(peer)
        if a is None or b is None or b == 0:
            return None
        return a / b

    def peers(self):
        seen = [k for k in list(self.values) + list(self.errors) if k != BAE]
        return list(dict.fromkeys(seen))

    def checks(self):
        """[(label, ok or None when it cannot be judged)] for every target."""
        out = []
        for t in self.targets:
            if t[0] == "ratio":
                _, peer, op, x = t
                r = self.ratio(peer)
                label = f"{op} {x:g}× {peer}"
            else:
                _, op, x = t
                r = self.median(BAE)
                label = f"{op} {x:g} {self.unit}"
            ok = None if r is None else (r >= x if op == "≥" else r <= x)
            out.append((label, ok, t))
        return out

    def to_json(self):
        return {
            "id": self.id, "title": self.title, "unit": self.unit, "better": self.better,
            "note": self.note, "extra": self.extra,
            "values": {k: summary(v) for k, v in self.values.items()},
            "errors": self.errors,
            "ratios": {p: self.ratio(p) for p in self.peers()},
            "targets": [{"target": label, "met": ok} for label, ok, _ in self.checks()],
        }


def summary(v):
    s = sorted(v)
    return {"min": s[0], "median": statistics.median(s), "max": s[-1], "runs": v}


def fmt(x):
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def mmm(fig, who):
    if who in fig.errors and who not in fig.values:
        return "n/a: " + fig.errors[who]
    v = fig.values.get(who)
    if not v:
        return "-"
    s = sorted(v)
    return f"{fmt(s[0])} / {fmt(statistics.median(s))} / {fmt(s[-1])}"


def table(figures):
    """A plain-text table: one row per figure and peer; targets missed say so."""
    rows = [("figure", "unit", "bae min / med / max", "peer", "peer min / med / max",
             "ratio", "target", "")]
    for f in figures:
        checks = f.checks()
        peers = f.peers() or [None]
        for i, p in enumerate(peers):
            ratio = f.ratio(p) if p else None
            tg = [(l, ok) for l, ok, t in checks if (t[0] == "ratio" and t[1] == p)]
            if i == 0:
                tg += [(l, ok) for l, ok, t in checks if t[0] == "abs"]
            target = "; ".join(l for l, _ in tg)
            marks = " ".join("✔" if ok else ("✘ MISSED" if ok is False else "?")
                             for _, ok in tg)
            rows.append((f.title if i == 0 else "", f.unit if i == 0 else "",
                         mmm(f, BAE) if i == 0 else "", p or "",
                         mmm(f, p) if p else "", fmt(ratio) if ratio else "",
                         target, marks))
    widths = [min(max(len(r[c]) for r in rows), 60) for c in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append(" | ".join(c.ljust(widths[k]) for k, c in enumerate(r)).rstrip())
        if j == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(figures):
    lines = ["| what | unit | bae min / med / max | peer | peer min / med / max | ratio | target |",
             "|---|---|---|---|---|---|---|"]
    for f in figures:
        checks = f.checks()
        for i, p in enumerate(f.peers() or [None]):
            tg = [(l, ok) for l, ok, t in checks if t[0] == "ratio" and t[1] == p]
            if i == 0:
                tg += [(l, ok) for l, ok, t in checks if t[0] == "abs"]
            target = "; ".join(f"{l} {'✔' if ok else ('✘' if ok is False else '?')}"
                               for l, ok in tg)
            ratio = f.ratio(p) if p else None
            lines.append(f"| {f.title if i == 0 else ''} | {f.unit if i == 0 else ''} | "
                         f"{mmm(f, BAE) if i == 0 else ''} | {p or ''} | "
                         f"{mmm(f, p) if p else ''} | {fmt(ratio) if ratio else ''} | "
                         f"{target} |")
    return "\n".join(lines)


def write_json(path, meta, figures):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "figures": [x.to_json() for x in figures]}, f, indent=2)


def chart(path, figures, title):
    """Horizontal bars: bae's advantage over each peer (>1 is better for bae whichever
    way the unit goes), with the target as a tick; red where a target is missed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = []
    for f in figures:
        for p in f.peers():
            r = f.ratio(p)
            if not r:
                continue
            adv = r if f.better == "higher" else 1 / r
            tgt = None
            ok = None
            for label, good, t in f.checks():
                if t[0] == "ratio" and t[1] == p:
                    tgt = t[3] if f.better == "higher" else 1 / t[3]
                    ok = good
            bars.append((f"{f.title[:48]}\nvs {p}", adv, tgt, ok))
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(bars) + 1.5))
    ys = range(len(bars))
    colors = ["#c0392b" if ok is False else ("#27ae60" if ok else "#7f8c8d")
              for _, _, _, ok in bars]
    ax.barh(list(ys), [b[1] for b in bars], color=colors)
    for y, (_, adv, tgt, _) in zip(ys, bars):
        ax.text(adv, y, f" {adv:.2f}", va="center", fontsize=8)
        if tgt:
            ax.plot([tgt, tgt], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("bae's advantage (×; > 1: bae better; black tick: target; red: missed)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

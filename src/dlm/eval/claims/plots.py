"""The claims report's PNG plots: accuracy against NFE, speed against quality, the facts outcomes."""

from __future__ import annotations

from pathlib import Path


def _accuracy_plot(plt, trained: dict, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, t in trained.items():
        line = ax.plot([r["nfe_mean"] for r in t["diffusion"]], [r["accuracy"] for r in t["diffusion"]],
                       marker="o", label=f"{name} diffusion")  # fmt: skip
        a = t["ar"][0]
        ax.scatter([a["nfe_mean"]], [a["accuracy"]], marker="x", s=80, color=line[0].get_color(), label=f"{name} AR")
    ax.set_xlabel("forward passes per answer (NFE)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs NFE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_nfe.png", dpi=110)
    plt.close(fig)
    return "accuracy_vs_nfe.png"


def write_plots(m: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    trained = {name: t for name, t in m["tasks"].items() if "diffusion" in t}
    if trained:
        files.append(_accuracy_plot(plt, trained, out))
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in m["bench"]["rows"]:
        q = r["agreement"] if r["agreement"] is not None else float("nan")
        ax.scatter(r["tok_s"], q if r["method"] != "ar" else 1.0, marker="x" if r["method"] == "ar" else "o")
        ax.annotate(f"{r['method']} b{r['batch']}", (r["tok_s"], q if r["method"] != "ar" else 1.0), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s")
    ax.set_ylabel("agreement with the reference (AR: plotted at 1)")
    ax.set_title("Speed vs quality")
    fig.tight_layout()
    fig.savefig(out / "speed_vs_quality.png", dpi=110)
    files.append("speed_vs_quality.png")
    plt.close(fig)

    f = m["tasks"].get("facts", {})
    if "diffusion" in f:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        labels = ["correct", "abstained", "hallucinated"]
        d, a = f["diffusion"][-1], f["ar"][0]
        vals_d = [d["accuracy"], d["abstained"], d["hallucinated"]]
        vals_a = [a["accuracy"], a["abstained"], a["hallucinated"]]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], vals_d, 0.4, label="diffusion")
        ax.bar([x + 0.2 for x in xs], vals_a, 0.4, label="AR twin")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("share of test questions")
        ax.set_title("Synthetic facts")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "hallucination.png", dpi=110)
        files.append("hallucination.png")
        plt.close(fig)
    return files

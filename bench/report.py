"""The appendix's "Reading the results", written from the benchmark results, never typed.

    python bench/report.py            # rewrite table_<tag>.md and reading_<tag>.md from the JSONs

Every number in the text comes from ``bench/results/<benchmark>_<tag>.json``, and so does every
comparison word: "lowest", "fastest", "within a standard error" are decided here from the
numbers, so a rerun that changes a ranking changes the sentence. ``bench/run.py`` calls
:func:`reading` after each run; the book's appendix includes the file it writes.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ("maf", "realnvp", "sampling", "distill", "best", "recipe")
PEERS = ("zuko", "nflows", "normflows")
NAMES = {"eight_gaussians": "eight Gaussians", "rings": "rings", "digits": "the digits"}


def _pm(e: dict, key: str, digits: int = 3) -> str:
    """``mean ± se``, with enough decimals that the standard error shows a significant digit."""
    v, se = e[key], e.get(f"{key}_se", float("nan"))
    if not math.isfinite(v):
        return "diverged"
    if not math.isfinite(se):
        return f"{v:.{digits}f}"
    if 0 < se < 10 ** -digits:
        digits = min(5, -math.floor(math.log10(se)))
    return f"{v:.{digits}f} ± {se:.{digits}f}"


def _of(lib: str) -> str:
    """The possessive: zuko's, nflows'."""
    return f"{lib}'" if lib.endswith("s") else f"{lib}'s"


def _ranked(summary: dict, key: str) -> list[str]:
    return sorted((lib for lib in summary if math.isfinite(summary[lib][key])),
                  key=lambda lib: summary[lib][key])


def _versus(summary: dict, key: str, what: str) -> str:
    """flowlib's place among the libraries on ``key`` (lower is better), in words."""
    order = _ranked(summary, key)
    mine = summary["flowlib"]
    best_other = next(lib for lib in order if lib != "flowlib")
    other = summary[best_other]
    gap = abs(mine[key] - other[key])
    se = math.hypot(mine.get(f"{key}_se", 0.0) or 0.0, other.get(f"{key}_se", 0.0) or 0.0)
    rest = ", ".join(f"{lib} {summary[lib][key]:.3f}" for lib in order
                     if lib not in ("flowlib", best_other))
    if order[0] == "flowlib":
        lead = (f"`flowlib` has the lowest mean {what}, {_pm(mine, key)}, against {_of(best_other)} "
                f"{_pm(other, key)}")
    else:
        lead = (f"{best_other} has the lowest mean {what}, {_pm(other, key)}, against `flowlib`'s "
                f"{_pm(mine, key)}")
    close = (" (a difference within one combined standard error: a tie)" if gap <= se else
             f" (a difference of {gap / se:.1f} combined standard errors)" if se > 0 else "")
    return lead + close + (f"; then {rest}" if rest else "") + "."


def _speed(results: dict) -> str:
    ratios: dict[str, list[float]] = {}
    slower: list[str] = []
    where: list[str] = []
    for name, label in (("maf", "benchmark 1"), ("realnvp", "benchmark 2")):
        if name not in results:
            continue
        for group, libs in results[name]["summary"].items():
            for lib in PEERS:
                ratio = libs.get(lib, {}).get("flowlib_time_ratio", float("nan"))
                if math.isfinite(ratio):
                    ratios.setdefault(lib, []).append(ratio)
                    if ratio >= 1.0:
                        slower.append(f"{lib} on {NAMES.get(group, group)} ({label}: "
                                      f"{ratio:.2f} of its time)")
        where.append({"maf": "the MAF of benchmark 1", "realnvp": "the coupling flow of "
                      "benchmark 2"}[name])
    if not ratios:
        return ""
    parts = []
    for lib, rs in ratios.items():
        lo, hi = min(rs), max(rs)
        span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f} to {hi:.2f}"
        parts.append(f"{span} of {_of(lib)}")
    head = ("`flowlib` has the fastest training step in every benchmark that trains with the shared "
            "loop" if not slower else
            "`flowlib`'s training step is the fastest in every comparison but "
            + " and ".join(slower))
    return (f"**Speed.** {head}. On {' and '.join(where)} its step takes {', '.join(parts)} "
            "time (medians over rounds of the per-round ratio). Most of a step here is the fixed "
            "cost of each small tensor operation (the models are tiny, the batch is 256), so the "
            "difference comes from doing fewer of them: no permutation layers in the MAF, no zero "
            "tensors to start the log-determinant sums, the NaN check made once where the data "
            "enter rather than in every layer. On a GPU the same counting applies to kernel "
            "launches.")


def _maf(results: dict) -> str:
    if "maf" not in results:
        return ""
    r = results["maf"]
    s = r["summary"]
    seeds = r["setup"]["seeds"]
    return (f"**Quality, MAF** ({seeds} seeds, KL to the true density in nats). On eight Gaussians "
            + _versus(s["eight_gaussians"], "kl", "KL")
            + " On rings " + _versus(s["rings"], "kl", "KL")[0].lower()
            + _versus(s["rings"], "kl", "KL")[1:]
            + (" normflows is far behind on both for the reason given above: built as its "
               "documentation builds a MAF, it can only expand the data towards the base."
               if all("normflows" in s[d] and s[d]["normflows"]["kl"] > 2 * s[d]["flowlib"]["kl"]
                      for d in ("eight_gaussians", "rings")) else ""))


def _coupling(results: dict) -> str:
    if "realnvp" not in results:
        return ""
    r = results["realnvp"]
    s = r["summary"]["digits"]
    gauss = r["gaussian_bits_per_dim"]
    below = [lib for lib in _ranked(s, "bits_per_dim") if s[lib]["bits_per_dim"] < gauss]
    rel = (f"{' and '.join(below)} {'comes' if len(below) == 1 else 'come'} below it, the others "
           "do not" if below else "no flow comes below it")
    st = r["setup"]
    passes = st["steps"] * st["batch"] / st["train"]
    return ("**Quality, coupling flow on the digits** (test bits per dimension). "
            + _versus(s, "bits_per_dim", "bits/dim") + " A full-covariance Gaussian fitted to "
            f"the same data reaches {gauss:.3f}; {rel}. With {st['train']} training images, "
            f"{st['steps']} steps of batch {st['batch']} are about {passes:.0f} passes over the "
            "data, enough for a flow of this size to start fitting its training images rather "
            "than the digits, which is why chapter 3 uses smaller conditioners.")


def _sampling(results: dict) -> str:
    if "sampling" not in results:
        return ""
    r = results["sampling"]
    by = {(x["lib"], x["model"], x["dim"]): x for x in r["rows"]}
    dims = sorted({x["dim"] for x in r["rows"]})
    zuko_dims = [d for d in dims if ("zuko", "maf", d) in by]
    d = max(zuko_dims) if zuko_dims else max(dims)
    mine_s, mine_l = by["flowlib", "maf", d]["sample_ms"], by["flowlib", "iaf", d]["log_prob_ms"]
    text = [f"**Sampling cost.** The figure and table 3 time the sequential directions. With "
            "`flowlib`'s incremental pass (chapter 6, section 6.5: every hidden unit of each MADE "
            f"computed once, the $D$ steps kept), a MAF draws {r['setup']['batch']:,} samples at "
            f"$D = {d}$ in {mine_s:.0f} ms"]
    if ("zuko", "maf", d) in by:
        z_s, z_l = by["zuko", "maf", d]["sample_ms"], by["zuko", "iaf", d]["log_prob_ms"]
        text.append(f" against {z_s:.0f} ms for zuko ({z_s / mine_s:.0f} times faster), and the "
                    f"IAF evaluates the density of {r['setup']['batch']:,} points it did not "
                    f"generate in {mine_l:.0f} ms against zuko's {z_l:.0f} ms "
                    f"({z_l / mine_l:.0f} times).")
    else:
        text.append(".")
    naive_s = by["flowlib", "maf", d]["sample_naive_ms"]
    naive_l = by["flowlib", "iaf", d]["log_prob_naive_ms"]
    text.append(f" The same `flowlib` layers run by the textbook loop of $D$ MADE passes take "
                f"{naive_s:.0f} and {naive_l:.0f} ms: the rearrangement alone gives "
                f"{naive_s / mine_s:.0f}x and {naive_l / mine_l:.0f}x here")
    top = max(dims)
    if top != d:
        t = by["flowlib", "maf", top]
        text.append(f", and {t['sample_naive_ms'] / t['sample_ms']:.0f}x at $D = {top}$, where "
                    "the loop's cost grows as $D$ passes of a network that itself widens with $D$")
    text.append(".")
    diff = max(x.get("max_abs_diff_naive", 0.0) for x in r["rows"])
    parallel = by["flowlib", "maf", d]["log_prob_ms"]
    text.append(f" The incremental and the naive pass agree to {diff:.1g} on a float32 MAF "
                "(to $10^{-10}$ in float64, `tests/test_sequential.py`). The sequential direction "
                f"is still slower than the parallel one ({mine_s / parallel:.1f} times MAF "
                f"`log_prob` at $D = {d}$): the arithmetic is one pass, but the $D$ steps remain one "
                "after another.")
    if r.get("train"):
        rows = [x for x in r["train"] if x["lib"] == "zuko"]
        if rows:
            text.append(" The MAF training step, timed in the same process, took "
                        + " and ".join(f"{x['flowlib_time_ratio']:.2f} of zuko's time at "
                                       f"$D = {x['dim']}$" for x in rows) + " (table 3's last rows).")
    load = (r.get("machine") or {}).get("load_average_at_start")
    text.append(" The milliseconds depend on the machine and on what else it runs"
                + (f" (load average {load:.1f} when this benchmark started)" if load is not None
                   else " (this run did not record the machine's load)")
                + "; the ratios come from operations alternated within one process and are what "
                "the table is for.")
    return "".join(text)


def _distill(results: dict) -> str:
    if "distill" not in results:
        return ""
    r = results["distill"]
    s = r["summary"]
    t_kl = statistics.mean(t["kl_data_to_teacher"] for t in r["teachers"])
    per_seed = {lib: [x["kl_student_teacher"] for x in sorted(r["runs"], key=lambda x: x["seed"])
                      if x["lib"] == lib] for lib in s}
    order = _ranked(s, "kl_student_teacher")
    best_every_seed = all(
        per_seed["flowlib"][k] <= min(per_seed[lib][k] for lib in s if lib != "flowlib")
        for k in range(len(per_seed["flowlib"])))
    text = [f"**Distillation.** Every student learns from the same `flowlib` MAF teacher per seed "
            f"(KL to the truth {t_kl:.3f} on average) for {r['setup']['student_steps']} steps of "
            f"batch {r['setup']['batch']}: the peers' with the shared loop, `flowlib`'s with its "
            "recipe, `flowlib.distill` with the forward-KL warm-up (benchmark 6 takes the recipe "
            "apart). KL(s‖t), the objective: "]
    text.append("; ".join(f"{lib} {_pm(s[lib], 'kl_student_teacher')}" for lib in order))
    text.append(f". `flowlib`'s students are {'the best on every seed' if best_every_seed else 'not the best on every seed'}"
                " (per seed: " + "; ".join(
                    f"{lib} " + ", ".join(f"{v:.3f}" for v in per_seed[lib]) for lib in order) + ").")
    text.append(" Their KL to the true density, KL(s‖p): " + "; ".join(
        f"{lib} {_pm(s[lib], 'kl_student_data')}" for lib in _ranked(s, "kl_student_data")) + ".")
    text.append(" The forward KL to the data, KL(p‖s), shows which students left a mode almost "
                "empty, where their log-density of the data plunges (medians over seeds: "
                + "; ".join(f"{lib} {s[lib]['kl_data_student_median']:.3g}" for lib in order) + ").")
    if "zuko" in s and "flowlib_time_ratio" in s["zuko"]:
        ratio = s["zuko"]["flowlib_time_ratio"]
        text.append(f" The recipe is not free: a `flowlib` step took {ratio:.1f} times a zuko "
                    "step (median over seeds), the warm-up's steps evaluating the student's sequential "
                    "density with gradients; the comparison is at equal steps, not equal time.")
    if r.get("merged_from_earlier_run"):
        text.append(" (The runs of " + ", ".join(r["merged_from_earlier_run"])
                    + " come from an earlier run with the same seeds and teachers: their step "
                    "times were taken under a different load than the others'.)")
    return "".join(text)


def _recipe(results: dict) -> str:
    if "recipe" not in results:
        return ""
    r = results["recipe"]
    s = r["summary"]
    names = list(s)
    base, defaults, warm = (s[n] for n in names)
    key = "kl_student_teacher"

    def better(a: dict, b: dict) -> str:
        gap = b[key] - a[key]
        se = math.hypot(a[f"{key}_se"], b[f"{key}_se"])
        if gap > se:
            return "lowered it"
        if gap < -se:
            return "raised it"
        return "did not change it beyond a standard error"

    lows = sum(w <= min(x, y) for w, x, y in zip(warm["per_seed"], base["per_seed"],
                                                 defaults["per_seed"]))
    return ("*What each part of the recipe bought* (benchmark 6, the same student, teachers and "
            f"seeds, {r['setup']['steps']} steps). With the peers' shared loop the `flowlib` "
            f"student reaches KL(s‖t) {_pm(base, key)}; `distill`'s learning rate, cosine decay and "
            f"clipping {better(defaults, base)} ({_pm(defaults, key)}); the forward-KL warm-up "
            f"then {better(warm, defaults)} ({_pm(warm, key)}), and gave the lowest value on "
            f"{lows} of {len(warm['per_seed'])} seeds. The reverse KL is mode-seeking: on eight "
            "modes far apart a student can settle with mass stranded between them, and which modes "
            "it finds depends on the seed. Maximising its likelihood of teacher samples first puts "
            "its mass on every mode (mass-covering), and the reverse KL then sharpens it. Three "
            "seeds measure a large effect, not a small one. The warm-up costs the student's "
            "sequential density of given points, $D$ MADE passes per layer with gradients, which "
            "is why it is an option (`warmup=`) and not a default: at $D = 2$ it is cheap, at the "
            "waveforms' $D = 64$ of chapter 7 it is not.")


def _best(results: dict) -> str:
    if "best" not in results:
        return ""
    s = results["best"]["summary"]
    g, rr = s["eight_gaussians"], s["rings"]
    a = g["model"]["arch"]
    text = ("**The course's best model.** A rational-quadratic spline flow {cite:p}`durkan2019neural` "
            f"(`flowlib.models.nsf(2, layers={a['layers']}, bins={a['bins']}, kind=\"{a['kind']}\")`, "
            "the monotonic spline of {cite:t}`gregory1982piecewise`), trained with `flowlib.fit` "
            f"(cosine learning-rate decay from {g['model']['lr']}) for as many steps as fit into the "
            f"fastest peer's training time of benchmark 1 ({g['budget_of']}, "
            f"{g['budget_seconds']:.1f} s here; a short timing probe sets the steps, about "
            f"{g['steps']:,.0f}, and the run took {g['seconds']:.1f} s), reaches a KL to the "
            f"truth of {_pm(g, 'kl')} nats on eight Gaussians and {_pm(rr, 'kl')} on rings")
    if "maf" in results:
        m = results["maf"]["summary"]
        best_maf = {d: min(e["kl"] for e in m[d].values() if math.isfinite(e["kl"])) for d in m}
        factor = min(best_maf["eight_gaussians"] / g["kl"], best_maf["rings"] / rr["kl"])
        text += (f", {factor:.0f} times or more below the best MAF of benchmark 1 on each. The "
                 f"spline gives each layer a monotonic map of each coordinate with {a['bins']} "
                 "pieces instead of one line, which is what these multi-modal conditionals need.")
    else:
        text += "."
    return text


def reading(results: dict) -> str:
    """The Markdown of the appendix's "Reading the results" from ``results`` (benchmark name ->
    its JSON, as ``bench/run.py`` writes them)."""
    machines: dict[str, list[str]] = {}
    for k, name in enumerate(BENCHMARKS, 1):
        m = results.get(name, {}).get("machine")
        if m:
            machines.setdefault(f"{m.get('cores')}-core {m.get('name')}", []).append(str(k))
    where = "; ".join(f"benchmark{'s' if len(ks) > 1 else ''} {', '.join(ks)} on a {cpu}"
                      for cpu, ks in machines.items())
    total = sum(results[name].get("seconds", 0.0) for name in BENCHMARKS if name in results)
    head = (f"Written by `bench/report.py` from the result files above ({where}; one thread per "
            f"run; {total / 60:.0f} minutes of benchmarks in all).")
    parts = [head, _speed(results), _maf(results), _coupling(results), _sampling(results),
             _distill(results), _recipe(results), _best(results)]
    return "\n\n".join(p for p in parts if p) + "\n"


def load(out: Path = RESULTS, tag: str = "cpu") -> dict:
    results: dict = {}
    for name in BENCHMARKS:
        f = out / f"{name}_{tag}.json"
        if f.exists():
            results[name] = json.loads(f.read_text())
    machines = [r["machine"] for r in results.values() if "machine" in r]
    results["machine"] = machines[-1] if machines else {}
    return results


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import run  # the table lives beside the benchmarks it describes

    tag = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    results = load(RESULTS, tag)
    (RESULTS / f"table_{tag}.md").write_text(run.table(results))
    (RESULTS / f"reading_{tag}.md").write_text(reading(results))
    print(reading(results))


if __name__ == "__main__":
    main()

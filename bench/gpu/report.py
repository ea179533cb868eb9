"""The report of `python -m bench.gpu_train`: a line of text for each part's figures, and the
harness result (one row a part) the check prints and writes."""

from __future__ import annotations

from typing import Any

from bench import harness


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def engine_text(label: str, r: dict) -> str:
    if "error" in r:
        return f"{label}: failed"
    how = [f"zero{r['zero_stage']}"] if "zero_stage" in r else []
    how.append("compiled" if r["compiled"] else "eager")
    return f"{label} ({', '.join(how)}): {r['tokens_per_s']:,.0f} tok/s MFU {pct(r['mfu'])}"


def describe_small(f: dict) -> list[str]:
    engines = (("megagpt", "megagpt"), ("reference", "reference"),
               ("megagpt_as_configured", "megagpt as configured"))
    text = [engine_text(label, f[key]) for key, label in engines if f.get(key)]
    if "megagpt_vs_reference" in f:
        text.append(f"megagpt/reference {f['megagpt_vs_reference']:.2f}x")
    if "flash_attention" in f:
        flash = f["flash_attention"]  # True / False, None on a CPU, or {"error": ...}
        shown = "n/a (CPU)" if flash is None else "failed" if isinstance(flash, dict) else flash
        text.append(f"flash: {shown}")
    return text


def describe_precision(f: dict) -> list[str]:
    if "final_relative_difference" not in f:
        return []
    text = [f"{' vs '.join(f['runs'])} over {f['steps']} steps: max rel diff "
            f"{pct(f['max_relative_difference'])} (step {f['max_at_step']}), final "
            f"{pct(f['final_relative_difference'])}; fp32 loss {f['first_loss']:.2f} -> "
            f"{f['final_loss']:.2f}"]
    if "bf16" not in f["runs"]:
        text.append("bf16 not run (CPU)")
    return text


def describe_xl(f: dict) -> list[str]:
    if "planned_gib" not in f:
        return []
    if "peak_allocated_gib" in f:
        text = [f"peak {f['peak_allocated_gib']:.1f} GiB vs plan {f['planned_gib']:.1f} GiB "
                f"({f['peak_vs_plan']:.2f}x)"]
    else:
        text = [f"plan {f['planned_gib']:.2f} GiB, peak not measured (CPU)"]
    if "tokens_per_s" in f:
        text.append(f"{f['tokens_per_s']:,.0f} tok/s MFU {pct(f['mfu'])}")
    return text


def describe_loss(f: dict) -> list[str]:
    if "grad_relative_difference" not in f:
        return []
    c, p = f["chunked"], f["plain"]
    if c["peak_gib"] is not None:
        text = [f"peak chunked {c['peak_gib']:.2f} GiB vs plain {p['peak_gib']:.2f} GiB "
                f"({f['memory_ratio']:.1f}x less)"]
    else:
        text = ["peak not measured (CPU)"]
    return [*text, f"{c['ms']:.1f} ms vs {p['ms']:.1f} ms",
            f"grads agree to {f['grad_relative_difference']:.1e}"]


DESCRIBERS = {"small": describe_small, "precision": describe_precision, "xl": describe_xl,
              "loss": describe_loss}


def describe(name: str, result: dict) -> str:
    """The table's text for a part's figures (those it has: a part cut short has fewer)."""
    if name == "tests" or "summary" in result:
        return result.get("summary", "")
    text = DESCRIBERS[name](result.get("figures", {}))
    if result["status"] != "ok" and result.get("error"):
        text.append(result["error"][-1][:120])
    return " | ".join(text)


def header(settings: dict[str, Any], figures: dict[str, Any], versions: str) -> str:
    """The lines above the table: the device, its peak, the versions, the fused Adam build."""
    peak, prep = figures["peak_flops"], figures["prepare_fused_adam"]
    peak_text = f" (peak {peak / 1e12:.0f} TFLOP/s bf16)" if peak else ""
    build_time = f" in {prep['seconds']:.0f} s" if "seconds" in prep else ""
    return (f"\ngpu-check on {settings['device']}{peak_text}, {versions}"
            + (" [smoke: toy shapes]" if settings["smoke"] else "")
            + f"\nfused Adam: {prep['status']}{build_time}")


def summarize(question: str, settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a check: `figures` holds peak_flops, prepare_fused_adam, parts and elapsed_s."""
    table = harness.Table(["part", "status", "time", "budget", "result"])
    for name, r in figures["parts"].items():
        seconds = f"{r['seconds']:.0f} s" if "seconds" in r else "-"
        table.add(name, r["status"], seconds, f"{r['budget_s']:.0f} s", describe(name, r))
    failed = [n for n, r in figures["parts"].items() if r["status"] in ("failed", "timeout")]
    ok = not failed and figures["prepare_fused_adam"]["status"] != "failed"
    return harness.Result(
        question=question, settings=settings, figures=figures, table=table,
        reference="small: a nanoGPT-style GPT-2 of the same shape on the same batches; precision: fp32; "
                  "xl: megagpt.plan's estimate of the same Layout; loss: the plain logits path",
        goal=harness.Goal("every part runs to the end within its budget (none failed or timed out)", ok))

"""Parsers for profiler text a user pastes: torch.profiler tables and Nsight Compute CSV."""

from __future__ import annotations

import csv
import io
import re

from pydantic import BaseModel, Field

from kfoundry.schema import KernelCounters

# Canonical counter keys, each with the spellings Nsight Compute uses for it: the
# ``--page details`` display names (old and new) and the ``--page raw`` metric names.
COUNTER_ALIASES: dict[str, tuple[str, ...]] = {
    "duration_us": ("Duration", "gpu__time_duration.sum"),
    "dram_pct": (
        "DRAM Throughput",
        "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    ),
    "memory_pct": (
        "Memory Throughput",
        "Memory [%]",
        "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
    ),
    "sm_pct": ("Compute (SM) Throughput", "SM [%]", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    "occupancy_pct": ("Achieved Occupancy", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    "theoretical_occupancy_pct": ("Theoretical Occupancy", "sm__maximum_warps_per_active_cycle_pct"),
    "registers_per_thread": ("Registers Per Thread", "launch__registers_per_thread"),
    "l1_hit_pct": ("L1/TEX Hit Rate", "l1tex__t_sector_hit_rate.pct"),
    "l2_hit_pct": ("L2 Hit Rate", "lts__t_sector_hit_rate.pct"),
    "shared_per_block": ("Static Shared Memory Per Block", "launch__shared_mem_per_block_static"),
    "dynamic_shared_per_block": ("Dynamic Shared Memory Per Block", "launch__shared_mem_per_block_dynamic"),
    "block_size": ("Block Size", "launch__block_size"),
    "grid_size": ("Grid Size", "launch__grid_size"),
    "waves_per_sm": ("Waves Per SM", "launch__waves_per_multiprocessor"),
}
_CANONICAL = {alias.lower(): key for key, aliases in COUNTER_ALIASES.items() for alias in aliases}
_TIME_UNITS_US = {
    "ns": 1e-3,
    "nsecond": 1e-3,
    "us": 1.0,
    "usecond": 1.0,
    "ms": 1e3,
    "msecond": 1e3,
    "s": 1e6,
    "second": 1e6,
}

class TableRow(BaseModel):
    name: str
    self_cpu_us: float = 0.0
    self_device_us: float = 0.0
    calls: int = 1


class ProfilerTable(BaseModel):
    """Rows of a ``key_averages().table()`` printout; ``device`` is e.g. "CUDA" when it has device columns."""

    rows: list[TableRow] = Field(default_factory=list)
    device: str | None = None


class NcuReport(BaseModel):
    """Per-kernel canonical counters (see ``COUNTER_ALIASES``) plus ``launches``."""

    kernels: dict[str, dict[str, float]] = Field(default_factory=dict)


def counter(metrics: dict[str, float], key: str) -> float | None:
    """Value of canonical counter ``key`` in ``metrics``, whichever spelling it was stored under."""
    if key in metrics:
        return metrics[key]
    for name, value in metrics.items():
        if _CANONICAL.get(name.lower()) == key:
            return value
    return None


# -- torch.profiler table ----------------------------------------------------------------


def parse_profiler_table(text: str) -> ProfilerTable | None:
    """Parse ``prof.key_averages().table(...)`` output; None when ``text`` is not one."""
    lines = text.splitlines()
    header_at = next(
        (i for i, line in enumerate(lines) if "Name" in line and "Self CPU" in line and "# of Calls" in line), None
    )
    if header_at is None:
        return None
    rule = next((lines[i] for i in (header_at - 1, header_at + 1) if 0 <= i < len(lines) and _is_rule(lines[i])), None)
    spans = [m.span() for m in re.finditer(r"-+", rule)] if rule else None
    # Fixed-width slicing keeps names with spaces intact; a table whose alignment was lost
    # in pasting still splits on runs of two or more spaces.
    table = _read_rows(lines, header_at, spans) if spans else None
    return table or _read_rows(lines, header_at, None)


def _read_rows(lines: list[str], header_at: int, spans: list[tuple[int, int]] | None) -> ProfilerTable | None:
    def cells(line: str) -> list[str]:
        if spans:
            return [line[a:b].strip() for a, b in spans]
        return re.split(r"\s{2,}", line.strip())

    columns = cells(lines[header_at])
    index = {name: i for i, name in enumerate(columns)}
    if not {"Name", "Self CPU", "# of Calls"} <= index.keys():
        return None
    device_col = next(
        (
            c
            for c in columns
            if c.startswith("Self ") and c not in ("Self CPU", "Self CPU %") and not c.endswith(("%", "Mem"))
        ),
        None,
    )
    table = ProfilerTable(device=device_col.removeprefix("Self ") if device_col else None)
    for line in lines[header_at + 1 :]:
        if _is_rule(line) or not line.strip():
            if table.rows:
                break
            continue
        row = cells(line)
        if len(row) < len(columns) or not row[index["Name"]]:
            continue
        try:
            table.rows.append(
                TableRow(
                    name=row[index["Name"]],
                    self_cpu_us=_time_us(row[index["Self CPU"]]),
                    self_device_us=_time_us(row[index[device_col]]) if device_col else 0.0,
                    calls=int(row[index["# of Calls"]].replace(",", "")),
                )
            )
        except ValueError:
            continue
    return table if table.rows else None


def _is_rule(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and set(stripped) <= {"-", " ", "="}


def _time_us(cell: str) -> float:
    match = re.fullmatch(r"([\d.,]+)\s*(ns|us|ms|s)", cell.strip())
    if match is None:
        raise ValueError(f"not a time: {cell!r}")
    return float(match[1].replace(",", "")) * _TIME_UNITS_US[match[2]]


# -- Nsight Compute CSV ------------------------------------------------------------------


def parse_ncu_csv(text: str) -> NcuReport | None:
    """Parse ``ncu --csv`` output, ``--page details`` (long) or ``--page raw`` (wide); None otherwise."""
    # ncu interleaves "==PROF==" log lines and program output with the CSV.
    lines = [line for line in text.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        return None
    header, body = rows[start], rows[start + 1 :]
    col = {name: i for i, name in enumerate(header)}
    launches: dict[str, set[str]] = {}
    sums: dict[str, dict[str, list[float]]] = {}

    def add(kernel: str, launch: str, name: str, unit: str, raw: str) -> None:
        key = _CANONICAL.get(name.lower())
        value = _number(raw)
        if key is None or value is None:
            return
        if key.endswith("_pct") and unit not in ("%", ""):
            return  # "Memory Throughput" also exists in GB/s under another section
        if key == "duration_us":
            value *= _TIME_UNITS_US.get(unit.lower(), 1.0)
        launches.setdefault(kernel, set()).add(launch)
        sums.setdefault(kernel, {}).setdefault(key, []).append(value)

    if {"Metric Name", "Metric Value"} <= col.keys():
        # Newer ncu appends rule columns to the header that metric rows leave out.
        needed = max(col[c] for c in ("Kernel Name", "Metric Name", "Metric Value", "Metric Unit", "ID") if c in col)
        for r in body:
            if len(r) <= needed:
                continue
            unit = r[col["Metric Unit"]] if "Metric Unit" in col else ""
            launch = r[col["ID"]] if "ID" in col else str(len(launches))
            add(r[col["Kernel Name"]], launch, r[col["Metric Name"]], unit, r[col["Metric Value"]])
    else:
        # Wide form: one column per metric, and a second header row of units.
        units = body[0] if body and not body[0][col["Kernel Name"]] else [""] * len(header)
        for n, r in enumerate(b for b in body if len(b) >= len(header) and b[col["Kernel Name"]]):
            launch = r[col["ID"]] if "ID" in col else str(n)
            for name, i in col.items():
                add(r[col["Kernel Name"]], launch, name, units[i] if i < len(units) else "", r[i])

    if not sums:
        return None
    report = NcuReport()
    for kernel, metrics in sums.items():
        merged = {k: (sum(v) if k == "duration_us" else sum(v) / len(v)) for k, v in metrics.items()}
        merged["launches"] = float(len(launches[kernel]))
        report.kernels[kernel] = merged
    return report


def kernel_counters(report: NcuReport) -> list[KernelCounters]:
    """Typed per-kernel counters, longest-running kernel first."""
    out: list[KernelCounters] = []
    for name, m in report.kernels.items():
        shared = [v for v in (m.get("shared_per_block"), m.get("dynamic_shared_per_block")) if v is not None]
        out.append(
            KernelCounters(
                name=name[:240], duration_us=m.get("duration_us"), sm_throughput_pct=m.get("sm_pct"),
                memory_throughput_pct=m.get("memory_pct"), dram_throughput_pct=m.get("dram_pct"),
                l1_hit_rate_pct=m.get("l1_hit_pct"), l2_hit_rate_pct=m.get("l2_hit_pct"),
                achieved_occupancy_pct=m.get("occupancy_pct"), theoretical_occupancy_pct=m.get("theoretical_occupancy_pct"),
                registers_per_thread=m.get("registers_per_thread"), shared_memory_per_block_bytes=sum(shared) if shared else None,
                block_size=m.get("block_size"), grid_size=m.get("grid_size"), waves_per_sm=m.get("waves_per_sm"), raw=dict(m),
            )
        )
    return sorted(out, key=lambda k: k.duration_us or 0.0, reverse=True)


def _number(raw: str) -> float | None:
    try:
        return float(raw.replace(",", "").strip())
    except ValueError:
        return None

"""Run days of a scenario with a baseline policy (centralized, or distributed with --distributed / --broker) and optional coordination protocols; print a summary and write the trajectory (CSV) and a plot (PNG)."""
from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from heron_edge.commands import PROTOCOLS as _PROTOCOLS
from heron_edge.commands import add_protocol, add_scenario, non_negative_int, output_dir, positive_int
from heron_edge.errors import ScenarioError
from heron_edge.trajectory import COLUMNS, Trajectory, tap_columns

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from heron_edge.policies.optimal import PlayedComparison
    from sim.scenario import Scenario

CSV_NAME = "trajectory.csv"
PNG_NAME = "trajectory.png"
SUMMARY_NAME = "summary.json"
CSV_COLUMNS = ("step", "timestamp", *COLUMNS[1:])
"""The CSV's header: ``COLUMNS`` with ``timestamp`` after ``step``, the ISO 8601 UTC start of the step
(e.g. 2023-01-05T13:00:00Z), so the rows can be joined with other time series without the profile year."""
PROTOCOLS = _PROTOCOLS
"""The protocols simulate can run (``heron_edge.commands.PROTOCOLS``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``heron-edge simulate``."""
    add_scenario(parser)
    parser.add_argument("--days", type=positive_int, default=1, metavar="N", help="one-day episodes (default: %(default)s)")
    parser.add_argument("--policy", type=policy_spec, default="rule", metavar="POLICY",
                        help="rule, random, idle, optimal (the perfect-foresight dispatch of each day, planned "
                             "with HiGHS; centralized only), or the directory of a policy bundle (heron-edge "
                             "train --out DIR) (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                        help="picks the training days and seeds the random policy (default: %(default)s)")
    parser.add_argument("--test-year", action="store_true", help="walk 2024 day by day from 1 January instead of random days of 2023")
    add_protocol(parser)
    parser.add_argument("--distributed", action="store_true",
                        help="run the agents distributed (local observations and messages) over an in-memory broker")
    parser.add_argument("--broker", metavar="URL", default=None,
                        help="run distributed over this MQTT broker, e.g. mqtt://127.0.0.1:1883 (implies --distributed)")
    parser.add_argument("--out", type=Path, default=Path("out"), metavar="DIR",
                        help=f"directory for {CSV_NAME}, {PNG_NAME} and {SUMMARY_NAME}, made if missing "
                             "(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Load the scenario, simulate, print the summary, write the CSV and PNG; 0 on success. A bad scenario or
    ``--out`` is a ScenarioError / ConfigError (exit 2), an unreachable ``--broker`` a BrokerError (exit 1):
    ``heron_edge.cli`` says them in one line. ``--out`` is made first, so a mistake there costs no run."""
    scenario = _load_scenario(args.scenario)
    out = output_dir("--out", Path(args.out))
    optimum: list[PlayedComparison] = []
    trajectory = simulate(scenario, days=args.days, policy=args.policy, seed=args.seed, test_year=args.test_year,
                          protocol=args.protocol, distributed=args.distributed or args.broker is not None,
                          broker_url=args.broker, optimum=optimum)
    summary = summarize(trajectory)
    print(summary_table(summary))
    print(protocol_summary(trajectory))
    for played in optimum:
        print(played.describe())
    write_summary(out / SUMMARY_NAME, summary, scenario=scenario.name, policy=str(args.policy), days=args.days,
                  trajectory=trajectory, optimum=optimum[0] if optimum else None)
    csv_path = write_csv(trajectory, out / CSV_NAME)
    png_path = plot(trajectory, out / PNG_NAME, title=f"{scenario.name}, {args.policy} policy, {args.days} day(s), {trajectory.mode}"
                    + (f", {' + '.join(trajectory.protocols)}" if trajectory.protocols else ""))
    print(f"trajectory: {csv_path}\nplot:       {png_path}\nsummary:    {out / SUMMARY_NAME}")
    return 0


def _load_scenario(name_or_path: str) -> Scenario:
    """The scenario, or a ScenarioError that says what is wrong (unknown name, missing or unreadable file, bad
    TOML, which field); shared by every verb that takes ``--scenario``."""
    from pydantic import ValidationError

    from sim.errors import ScenarioError as SimScenarioError
    from sim.scenario import load_scenario

    try:
        return load_scenario(name_or_path)
    except SimScenarioError as exc:  # the user's data series (sim.user_data): file and row in one line
        raise ScenarioError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise ScenarioError(str(exc)) from exc
    except OSError as exc:  # a directory, no permission
        raise ScenarioError(f"cannot read scenario file {name_or_path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"scenario file {name_or_path} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario file {name_or_path} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'scenario'}: {err['msg']}" for err in exc.errors())
        raise ScenarioError(f"scenario {name_or_path} does not validate: {problems}") from exc


def policy_spec(text: str) -> str:
    """argparse type of ``--policy``: a baseline's name or an existing directory (a policy bundle, checked later)."""
    from heron_edge.policies import BASELINES

    if text in BASELINES or Path(text).is_dir():
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither {', '.join(BASELINES)} nor a policy bundle directory")


def simulate(scenario: Scenario, *, days: int, policy: str, seed: int, test_year: bool = False,
             progress: bool = True, protocol: list[str] | None = None, distributed: bool = False,
             broker_url: str | None = None, optimum: list[PlayedComparison] | None = None) -> Trajectory:
    """Run ``days`` one-day episodes with ``policy`` ("rule", "random", "idle" or a policy bundle directory) and
    record every step.

    Centralized by default; ``distributed`` runs the same agents behind ProxyAgents over an in-memory
    broker, or over MQTT at ``broker_url``. A bundle reads the observation layout its manifest names (a ``local``
    one in the centralized loop too); the rule reads the global one when centralized. With the ``optimal`` policy,
    ``optimum`` (if given) receives its plans compared with what the plant did (:func:`~heron_edge.policies.optimal.compare`).
    """
    import numpy as np
    from tqdm import tqdm

    from heron_edge.brokers import InMemoryBroker, MqttBroker
    from heron_edge.env import MultiAgentMicrogrids
    from heron_edge.errors import ConfigError
    from heron_edge.policies import BASELINES, make_policies

    steps_per_day = scenario.steps_per_day
    observation = None
    if policy not in BASELINES:
        from heron_edge.policies.bundle import load_manifest

        observation = load_manifest(policy).layout.kind
        if distributed and observation == "global":
            raise ConfigError(f"policy bundle {policy} reads global observations: run it centralized")
    broker = (MqttBroker(broker_url) if broker_url else InMemoryBroker()) if distributed else None
    config: dict[str, Any] = {"centralized": not distributed, "max_episode_steps": steps_per_day, "scenario": scenario,
                              "train": not test_year, "protocol": protocol, "message_broker": broker,
                              "observation": observation}
    env: MultiAgentMicrogrids | None = None
    try:  # close the env (a distributed run's loop and broker connection) however the run ends
        try:  # the network and the profiles are only checked when the plant is built and first reset
            env = MultiAgentMicrogrids(config)
            env.reset(seed=seed)
        except ConfigError as exc:
            raise ScenarioError(str(exc)) from exc
        except (KeyError, ValueError) as exc:
            raise ScenarioError(f"scenario {scenario.name} cannot be run: {exc}") from exc
        agents = list(env.possible_agents)
        layout: Literal["centralized", "distributed"] = "distributed" if distributed else "centralized"
        policies = make_policies(policy, env, seed=seed)  # a bundle: checked against the env (ConfigError)
        zones = [np.asarray(z.buses) for z in env.plant.built.zones]
        total = days * steps_per_day
        records: dict[str, np.ndarray] = {c: np.empty((total, len(agents))) for c in COLUMNS if c != "microgrid"}
        k = 0
        with tqdm(total=total, unit="step", desc=f"simulate {policy}", disable=not progress) as bar:
            for day in range(days):
                obs, _ = env.reset(seed=seed if day == 0 else None)  # the same seed again: the same days as above
                while env.agents:
                    actions = {a: policies[a].act(obs[a]) for a in env.agents}
                    obs, _, _, _, infos = env.step(actions)
                    m = env.plant.last
                    assert m is not None
                    energy = np.array([infos[a]["energy_cost_usd"] for a in agents])  # settled: signal price, trades

                    def info(key: str, infos: dict[str, dict[str, Any]] = infos) -> list[float]:
                        return [float(infos[a][key]) for a in agents]  # NaN where the protocol does not run

                    row = {
                        "step": k, "day": day, "step_in_year": m.step, "hour": (m.step % steps_per_day) * scenario.step_hours,
                        "price_usd_per_mwh": info("price_usd_per_mwh"), "load_mw": m.load_mw, "pv_available_mw": m.pv_available_mw,
                        "pv_mw": m.pv_mw, "wind_available_mw": m.wind_available_mw, "wind_mw": m.wind_mw,
                        "battery_mw": m.applied.battery_mw, "generator_mw": m.applied.generator_mw, "soc": m.soc,
                        "exchange_mw": m.exchange_mw, "fuel_cost_usd": m.fuel_cost_usd, "energy_cost_usd": energy,
                        "cost_usd": m.fuel_cost_usd + energy, "penalty_usd": m.penalty_usd, "violation_v_pu": m.violation_v_pu,
                        "overload_percent": m.overload_percent,
                        "vm_min_pu": [m.vm_pu[b].min() for b in zones], "vm_max_pu": [m.vm_pu[b].max() for b in zones],
                        "converged": float(m.converged), **tap_columns(m.regulator_taps, m.tap_changes),
                        **{key: info(key) for key in ("congestion_adder_usd_per_mwh", "setpoint_mw", "tracking_error_mw",
                                                      "dispatch_mw", "consensus_rounds", "traded_mw", "trade_cash_usd",
                                                      "clearing_price_usd_per_mwh")},
                    }
                    for name, value in row.items():
                        records[name][k] = value
                    k += 1
                    bar.update()
        if policy == "optimal" and optimum is not None:
            from heron_edge.policies.optimal import compare_trajectory

            optimum.append(compare_trajectory(policies, records))
        messages = int(getattr(broker, "published", 0))
        protocols = env.coordination.protocols
        year = env.plant.year  # constant over a run: 2023 (training) or 2024 (test year)
    finally:
        if env is not None:
            env.close()
    return Trajectory(names=agents, columns=records, step_hours=scenario.step_hours,
                      protocols=protocols, mode=layout, messages=messages, year=year)


SUMMARY_FIELDS = ("cost_usd", "fuel_usd", "bought_mwh", "sold_mwh", "penalty_usd", "v_violation_steps", "overload_steps",
                  "nonconverged_steps")


def summarize(trajectory: Trajectory) -> dict[str, dict[str, float]]:
    """Per microgrid and "total": cost (fuel + energy, USD), fuel (USD), energy bought / sold (MWh), penalty (USD),
    steps with a voltage violation / an overload, and non-converged steps. The total of non-converged steps counts
    each step once (a power flow covers every microgrid); every other total is the sum over microgrids."""
    import numpy as np

    c, dt = trajectory.columns, trajectory.step_hours
    per = {
        "cost_usd": c["cost_usd"].sum(axis=0), "fuel_usd": c["fuel_cost_usd"].sum(axis=0),
        "bought_mwh": np.maximum(c["exchange_mw"], 0.0).sum(axis=0) * dt,
        "sold_mwh": np.maximum(-c["exchange_mw"], 0.0).sum(axis=0) * dt,
        "penalty_usd": c["penalty_usd"].sum(axis=0), "v_violation_steps": (c["violation_v_pu"] > 0).sum(axis=0),
        "overload_steps": (c["overload_percent"] > 0).sum(axis=0), "nonconverged_steps": (c["converged"] == 0).sum(axis=0),
    }
    table = {name: {f: float(per[f][i]) for f in SUMMARY_FIELDS} for i, name in enumerate(trajectory.names)}
    table["total"] = {f: float(per[f].sum()) for f in SUMMARY_FIELDS}
    table["total"]["nonconverged_steps"] = float((c["converged"][:, 0] == 0).sum())
    return table


def protocol_summary(trajectory: Trajectory) -> str:
    """One paragraph on coordination: mode, protocols, prices, trades, setpoint tracking, consensus rounds, messages."""
    import numpy as np

    c, dt = trajectory.columns, trajectory.step_hours
    price = c["price_usd_per_mwh"][:, 0]
    lines = [f"mode: {trajectory.mode}; protocols: {', '.join(trajectory.protocols) or 'none'}",
             f"price: mean {price.mean():.2f} USD/MWh (min {price.min():.2f}, max {price.max():.2f}); "
             f"congestion adder in {int((c['congestion_adder_usd_per_mwh'][:, 0] > 0).sum())} of {trajectory.n_steps} steps"]
    if "p2p_trading" in trajectory.protocols:
        bought = np.maximum(c["traded_mw"], 0.0).sum(axis=1)
        cleared = c["clearing_price_usd_per_mwh"][:, 0]
        traded = bought > 0
        mean_price = f"{np.nanmean(cleared[traded]):.2f} USD/MWh" if traded.any() else "-"
        lines.append(f"trades: {int(traded.sum())} steps with trades, {bought.sum() * dt:.3f} MWh traded, "
                     f"mean clearing price {mean_price}, fees {0.0 - np.nansum(c['trade_cash_usd']):.2f} USD")
    if "setpoint" in trajectory.protocols:
        lines.append(f"setpoint tracking: mean |error| {np.nanmean(np.abs(c['tracking_error_mw'])):.3f} MW")
    if "consensus" in trajectory.protocols:
        lines.append(f"consensus: dispatch mean {np.nanmean(c['dispatch_mw'].sum(axis=1)):.3f} MW, "
                     f"rounds per step mean {np.nanmean(c['consensus_rounds'][:, 0]):.1f} (0 = computed centrally)")
    if trajectory.mode == "distributed":
        lines.append(f"messages: {trajectory.messages} published, {trajectory.messages / max(trajectory.n_steps, 1):.1f} per step")
    return "\n".join(lines)


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a fixed-width text table."""
    headers = ("microgrid", "cost USD", "fuel USD", "bought MWh", "sold MWh", "penalty USD", "V viol.", "overload", "non-conv.")
    rows = [headers]
    for name, s in summary.items():
        rows.append((name, f"{s['cost_usd']:.2f}", f"{s['fuel_usd']:.2f}", f"{s['bought_mwh']:.3f}", f"{s['sold_mwh']:.3f}",
                     f"{s['penalty_usd']:.2f}", f"{s['v_violation_steps']:.0f}", f"{s['overload_steps']:.0f}",
                     f"{s['nonconverged_steps']:.0f}"))
    widths = [max(len(r[j]) for r in rows) for j in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_summary(path: Path, summary: dict[str, dict[str, float]], *, scenario: str, policy: str, days: int,
                  trajectory: Trajectory, optimum: PlayedComparison | None = None) -> Path:
    """Write the run's figures as JSON: ``total_cost_usd`` (fuel + energy + penalties, every microgrid, USD), the
    summary table per microgrid and in total, the run's setting, and for the optimal policy its plan against the
    plant (``optimal``: plan and plant cost, their gap, the linear model's error); returns the path."""
    import json

    total = summary["total"]
    document: dict[str, Any] = {
        "scenario": scenario, "policy": policy, "days": days, "steps": trajectory.n_steps, "year": trajectory.year,
        "mode": trajectory.mode, "protocols": list(trajectory.protocols),
        "total_cost_usd": total["cost_usd"] + total["penalty_usd"], "summary": summary}
    if optimum is not None:
        document["optimal"] = optimum.as_dict()
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


_INTEGER_COLUMNS = {"step", "day", "step_in_year", "converged"}


def timestamps(trajectory: Trajectory) -> list[str]:
    """ISO 8601 UTC start of each step (``YYYY-MM-DDTHH:MM:SSZ``): 1 January 00:00 of the profile year plus
    ``step_in_year`` steps (the profiles are indexed from there); empty strings when the year is unknown."""
    import datetime as dt

    if trajectory.year is None:
        return [""] * trajectory.n_steps
    start = dt.datetime(trajectory.year, 1, 1, tzinfo=dt.UTC)
    seconds = [round(float(k) * trajectory.step_hours * 3600.0) for k in trajectory.columns["step_in_year"][:, 0]]
    return [(start + dt.timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in seconds]


def write_csv(trajectory: Trajectory, path: Path) -> Path:
    """Write one row per step and microgrid with ``CSV_COLUMNS``; returns the path."""
    import csv

    c = trajectory.columns
    stamps = timestamps(trajectory)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for k in range(trajectory.n_steps):
            for i, name in enumerate(trajectory.names):
                writer.writerow([name if col == "microgrid" else stamps[k] if col == "timestamp" else
                                 int(c[col][k, i]) if col in _INTEGER_COLUMNS else repr(float(c[col][k, i]))
                                 for col in CSV_COLUMNS])
    return path


PANEL_LABELS = (
    "state of charge", "battery (MW)\n+ discharge, - charge", "generator (MW)", "PV + wind (MW)",
    "grid exchange (MW)\n+ import, - export", "price (USD/MWh)", "cost (USD per step)", "bus voltage (p.u.)",
)
"""The y labels of the plot's panels, top to bottom (the units and sign conventions of the CSV)."""

_LINESTYLES: tuple[str | tuple[int, tuple[int, ...]], ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_HATCHES = ("//", "\\\\", "..", "xx", "--", "||")


def _style(i: int, n: int) -> dict[str, Any]:
    """Microgrid ``i`` of ``n``: its own colour, line style and marker, and a width that shrinks with ``i`` (drawn
    on top) so that microgrids with the same values stay visible as nested lines."""
    import matplotlib

    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": colors[i % len(colors)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)], "linewidth": max(1.0, 2.8 - 1.6 * i / max(n - 1, 1)),
            "markersize": 5.0, "zorder": 2 + i}


def build_figure(trajectory: Trajectory, *, title: str = "") -> Figure:
    """The plot as a matplotlib Figure (``PANEL_LABELS``, one line style and marker per microgrid, legends
    to the right of the axes); separate from :func:`plot` so that tests can read its axes."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    c, dt, n_mg = trajectory.columns, trajectory.step_hours, len(trajectory.names)
    n = trajectory.n_steps
    edges = np.arange(n + 1) * dt  # step k covers [edges[k], edges[k + 1]): the last step is drawn too
    every = n_mg * max(1, n // 24)  # about 24 markers per panel, staggered so microgrids do not share a step
    fig = Figure(figsize=(12.5, 2.0 * len(PANEL_LABELS) + 0.6), layout="constrained")
    axes = fig.subplots(len(PANEL_LABELS), 1, sharex=True)

    def stairs(ax: Axes, values: np.ndarray, i: int, label: str) -> None:
        ax.step(edges, np.append(values, values[-1:]), where="post", label=label,
                markevery=list(range(i * every // n_mg, n, every)), **_style(i, n_mg))

    for i, name in enumerate(trajectory.names):
        stairs(axes[0], c["soc"][:, i], i, name)
        stairs(axes[1], c["battery_mw"][:, i], i, name)
        stairs(axes[2], c["generator_mw"][:, i], i, name)
        stairs(axes[3], c["pv_mw"][:, i] + c["wind_mw"][:, i], i, name)
        stairs(axes[4], c["exchange_mw"][:, i], i, name)
        stairs(axes[6], c["cost_usd"][:, i], i, f"{name} (total {np.nansum(c['cost_usd'][:, i]):.2f} USD)")
        style = _style(i, n_mg)
        axes[7].fill_between(edges, np.append(c["vm_min_pu"][:, i], c["vm_min_pu"][-1:, i]),
                             np.append(c["vm_max_pu"][:, i], c["vm_max_pu"][-1:, i]), step="post", alpha=0.25,
                             facecolor=style["color"], edgecolor=style["color"], hatch=_HATCHES[i % len(_HATCHES)],
                             linestyle=style["linestyle"], linewidth=1.0, label=f"{name} min-max")
    axes[5].step(edges, np.append(c["price_usd_per_mwh"][:, 0], c["price_usd_per_mwh"][-1:, 0]), where="post",
                 color="black", label="signalled price")
    if "p2p_trading" in trajectory.protocols:
        traded = np.maximum(c["traded_mw"], 0.0).sum(axis=1) > 0
        if traded.any():
            axes[5].plot(edges[:-1][traded] + dt / 2, c["clearing_price_usd_per_mwh"][traded, 0], linestyle="none",
                         marker="x", color="tab:red", label="p2p clearing price")
    for limit in (0.95, 1.05):
        axes[7].axhline(limit, color="red", linestyle="--", linewidth=0.8, label="limits" if limit < 1 else None)
    for k, ax in enumerate(axes):
        ax.set_ylabel(PANEL_LABELS[k])
        ax.grid(alpha=0.3)
        if k in (1, 2, 4, 5, 6):
            ax.axhline(0.0, color="grey", linewidth=0.6, zorder=1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    axes[0].set_ylim(-0.02, 1.02)
    starts = [0, *(np.flatnonzero(np.diff(c["day"][:, 0])) + 1).tolist()]  # the episodes' first steps
    stamps = timestamps(trajectory)
    for k in starts:  # training days are drawn at random: mark where each starts, with its date (UTC)
        if k:
            for ax in axes:
                ax.axvline(edges[k], color="grey", linestyle="--", linewidth=0.8)
        if stamps[k]:
            axes[0].annotate(f"{stamps[k][:10]} UTC", (edges[k], 1.0), xycoords=("data", "axes fraction"), xytext=(2, 2),
                             textcoords="offset points", fontsize="small", va="bottom")
    axes[-1].set_xlim(0.0, edges[-1])
    axes[-1].xaxis.set_major_locator(MultipleLocator(3 if edges[-1] <= 24 else 6 if edges[-1] <= 72 else 24))
    axes[-1].set_xlabel("time (h from the start of the run)" + ("; a dashed line starts each day" if len(starts) > 1 else ""))
    if title:
        fig.suptitle(title)
    return fig


def plot(trajectory: Trajectory, path: Path, *, title: str = "") -> Path:
    """Write :func:`build_figure` as a PNG; returns the path."""
    build_figure(trajectory, title=title).savefig(path, dpi=100)
    return path

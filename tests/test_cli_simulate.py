"""``heron-edge simulate``: the CSV (with timestamps), the PNG and its panels, the summary, the rule policy against
random, bad input."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import pytest

from heron_edge.cli import main
from heron_edge.commands.simulate import (
    COLUMNS,
    CSV_COLUMNS,
    CSV_NAME,
    PANEL_LABELS,
    PNG_NAME,
    Trajectory,
    build_figure,
    timestamps,
)
from heron_edge.policies import RandomPolicy, RulePolicy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MICROGRIDS = ("mg1", "mg2", "mg3")


def _simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _summary(out: str) -> dict[str, list[float]]:
    """Rows of the printed table: microgrid -> [cost, fuel, bought, sold, penalty, V viol., overload, non-conv.]."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in (*MICROGRIDS, "total") and len(parts) == 9:
            rows[parts[0]] = [float(x) for x in parts[1:]]
    return rows


@pytest.fixture(scope="module")
def two_days(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("sim")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["simulate", "--days", "2", "--out", str(out)])
    assert code == 0
    return out, buffer.getvalue()


def test_csv_has_one_row_per_step_and_microgrid(two_days: tuple[Path, str]) -> None:
    out, printed = two_days
    header, rows = _read_csv(out / CSV_NAME)
    assert header == list(CSV_COLUMNS) and header[:2] == ["step", "timestamp"] and set(COLUMNS) <= set(header)
    assert len(rows) == 2 * 24 * 3
    assert [r["microgrid"] for r in rows[:6]] == [*MICROGRIDS, *MICROGRIDS]
    assert [int(r["step"]) for r in rows] == [k for k in range(48) for _ in MICROGRIDS]
    assert {int(r["day"]) for r in rows} == {0, 1}
    for r in rows:
        soc = float(r["soc"])
        assert 0.1 - 1e-9 <= soc <= 0.9 + 1e-9
        assert abs(float(r["cost_usd"]) - float(r["fuel_cost_usd"]) - float(r["energy_cost_usd"])) < 1e-9
        assert float(r["vm_min_pu"]) <= float(r["vm_max_pu"])
        start = dt.datetime(2023, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=int(r["step_in_year"]))  # training year
        assert dt.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")) == start
        assert r["timestamp"].endswith(":00:00Z") and int(r["timestamp"][11:13]) == int(float(r["hour"]))
    assert str(out / CSV_NAME) in printed and str(out / PNG_NAME) in printed


def test_png_is_a_valid_png(two_days: tuple[Path, str]) -> None:
    out, _ = two_days
    data = (out / PNG_NAME).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 400


def test_summary_equals_csv_sums(two_days: tuple[Path, str]) -> None:
    out, printed = two_days
    _, rows = _read_csv(out / CSV_NAME)
    summary = _summary(printed)
    assert set(summary) == {*MICROGRIDS, "total"}
    expected_total = np.zeros(8)
    for mg in MICROGRIDS:
        mine = [r for r in rows if r["microgrid"] == mg]
        exchange = np.array([float(r["exchange_mw"]) for r in mine])
        expected = np.array([
            sum(float(r["cost_usd"]) for r in mine), sum(float(r["fuel_cost_usd"]) for r in mine),
            exchange.clip(min=0).sum(), (-exchange).clip(min=0).sum(), sum(float(r["penalty_usd"]) for r in mine),
            sum(float(r["violation_v_pu"]) > 0 for r in mine), sum(float(r["overload_percent"]) > 0 for r in mine),
            sum(r["converged"] == "0" for r in mine),
        ])
        np.testing.assert_allclose(summary[mg], expected, atol=0.006)  # the table rounds to 2-3 decimals
        expected_total += expected
    expected_total[7] = len({r["step"] for r in rows if r["converged"] == "0"})  # a step counts once
    np.testing.assert_allclose(summary["total"], expected_total, atol=0.02)
    assert summary["total"][0] > 0  # the microgrids buy energy: a zero table would be a bug


def test_rule_policy_beats_random_on_the_same_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    totals = {}
    days = {}
    for policy in ("rule", "random"):
        out = tmp_path / policy
        code, printed, _ = _simulate(capsys, "--days", "2", "--seed", "3", "--policy", policy, "--out", str(out))
        assert code == 0
        _, rows = _read_csv(out / CSV_NAME)
        days[policy] = [int(r["step_in_year"]) for r in rows]
        totals[policy] = _summary(printed)["total"]
    assert days["rule"] == days["random"]  # same seed, same days
    rule_cost, random_cost = totals["rule"][0], totals["random"][0]
    assert rule_cost < 0.8 * random_cost, (rule_cost, random_cost)
    assert totals["rule"][0] + totals["rule"][4] < totals["random"][0] + totals["random"][4]  # also with penalties


def test_test_year_walks_2024_from_the_first_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _simulate(capsys, "--days", "2", "--test-year", "--policy", "random", "--out", str(tmp_path))
    assert code == 0
    _, rows = _read_csv(tmp_path / CSV_NAME)
    assert [int(r["step_in_year"]) for r in rows[::3]] == list(range(48))
    assert [r["timestamp"] for r in rows[::3]] == [f"2024-01-0{1 + k // 24}T{k % 24:02d}:00:00Z" for k in range(48)]
    assert rows[3 * 37]["timestamp"] == "2024-01-02T13:00:00Z"


def _trajectory(n_steps: int = 48, *, year: int | None = 2023, step_hours: float = 1.0, first_step: int = 0,
                protocols: tuple[str, ...] = ()) -> Trajectory:
    """A made-up trajectory of three microgrids (days of 24 h); mg2 and mg3 have the same battery power."""
    k = np.arange(n_steps, dtype=float)[:, None] * np.ones((1, 3))
    columns = {c: np.zeros((n_steps, 3)) for c in COLUMNS if c != "microgrid"}
    columns.update(step=k, step_in_year=k + first_step, day=k * step_hours // 24, hour=(k * step_hours) % 24,
                   soc=0.5 + 0.3 * np.sin(k / 5), battery_mw=np.sign(np.sin(k / 4)) * [[0.5, 0.3, 0.3]],
                   exchange_mw=0.4 - 0.1 * k / n_steps, price_usd_per_mwh=50 + 20 * np.cos(k / 6), cost_usd=2.0 + k / 10,
                   vm_min_pu=np.full((n_steps, 3), 0.99), vm_max_pu=np.full((n_steps, 3), 1.02), converged=np.ones((n_steps, 3)))
    columns["vm_min_pu"][5:6] = columns["vm_max_pu"][5:6] = np.nan  # a diverged power flow (when there are 6 steps)
    if "p2p_trading" in protocols:
        columns["traded_mw"][:] = 0.0
        columns["traded_mw"][7] = [0.2, -0.2, 0.0]
        columns["clearing_price_usd_per_mwh"][:] = np.nan
        columns["clearing_price_usd_per_mwh"][7] = 42.0
    return Trajectory(names=list(MICROGRIDS), columns=columns, step_hours=step_hours, protocols=protocols, year=year)


def test_timestamps_of_a_known_day() -> None:
    assert timestamps(_trajectory(3, first_step=4 * 24 + 13)) == [  # the 5th of January, 13:00 UTC
        "2023-01-05T13:00:00Z", "2023-01-05T14:00:00Z", "2023-01-05T15:00:00Z"]
    quarter = _trajectory(2, year=2024, step_hours=0.25, first_step=(31 + 27) * 96 + 95)  # 2024 is a leap year
    assert timestamps(quarter) == ["2024-02-28T23:45:00Z", "2024-02-29T00:00:00Z"]
    assert timestamps(_trajectory(2, year=None)) == ["", ""]  # unknown year (e.g. a SIL plant's record): no timestamp


def test_figure_has_the_panels_with_units_and_signs() -> None:
    fig = build_figure(_trajectory(protocols=("p2p_trading",)), title="made up")
    axes = fig.axes
    labels = [ax.get_ylabel() for ax in axes]
    assert labels == list(PANEL_LABELS)
    battery = next(label for label in labels if label.startswith("battery"))
    assert "MW" in battery and "+ discharge" in battery and "- charge" in battery
    exchange = next(label for label in labels if label.startswith("grid exchange"))
    assert "MW" in exchange and "+ import" in exchange
    assert any(label.startswith("cost") and "USD per step" in label for label in labels)
    assert axes[-1].get_xlabel().startswith("time (h")
    assert fig.get_suptitle() == "made up"
    assert any(line.get_label() == "p2p clearing price" for line in axes[labels.index("price (USD/MWh)")].lines)


def test_figure_lines_are_distinguishable_and_legends_off_the_data() -> None:
    fig = build_figure(_trajectory())
    fig.draw_without_rendering()  # lays out the legends
    battery = fig.axes[PANEL_LABELS.index("battery (MW)\n+ discharge, - charge")]
    lines = {line.get_label(): line for line in battery.lines if line.get_label() in MICROGRIDS}
    assert set(lines) == set(MICROGRIDS)
    styles = {(str(line.get_linestyle()), line.get_marker()) for line in lines.values()}
    assert len({s[0] for s in styles}) == len({s[1] for s in styles}) == 3  # not only colours
    np.testing.assert_array_equal(lines["mg2"].get_ydata(), lines["mg3"].get_ydata())  # overlapping: nested widths
    assert lines["mg3"].get_linewidth() < lines["mg2"].get_linewidth() < lines["mg1"].get_linewidth()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the axes, never over a line


def test_unknown_scenario_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _simulate(capsys, "--scenario", "no_such_grid", "--out", str(tmp_path))
    assert code != 0
    assert "no_such_grid" in err and "ieee34_3x13" in err  # names what was asked and what exists
    assert "Traceback" not in err + out
    assert not (tmp_path / CSV_NAME).exists()


def test_invalid_scenario_file_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import resources

    text = resources.files("sim.scenarios").joinpath("ieee34_3x13.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('name = "mg2"', 'name = "mg2"\npv_mw = -1.0'))
    code, out, err = _simulate(capsys, "--scenario", str(bad), "--out", str(tmp_path))
    assert code != 0
    assert re.search(r"microgrids\.1\.pv_mw", err), err
    assert "Traceback" not in err + out

    unknown_profile = tmp_path / "unknown_profile.toml"
    unknown_profile.write_text(text.replace('load_profile = "load_pge"', 'load_profile = "load_atlantis"'))
    code, out, err = _simulate(capsys, "--scenario", str(unknown_profile), "--out", str(tmp_path))
    assert code != 0 and "load_atlantis" in err
    assert "Traceback" not in err + out

    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    code, _, err = _simulate(capsys, "--scenario", str(broken), "--out", str(tmp_path))
    assert code != 0 and "not valid TOML" in err


def test_days_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--days", "0"])
    assert exc.value.code == 2
    assert "--days" in capsys.readouterr().err


def test_rule_policy_reads_its_own_slice_and_prices() -> None:
    from heron_edge.env import MultiAgentMicrogrids

    env = MultiAgentMicrogrids({"centralized": True, "max_episode_steps": 24})
    obs, _ = env.reset(seed=1)
    sc = env.plant.scenario
    policies = [RulePolicy.from_scenario(sc, i) for i in range(3)]
    for i, agent in enumerate(env.possible_agents):
        np.testing.assert_array_equal(policies[i].local_features(obs[agent]), obs[agent][3 + 8 * i: 11 + 8 * i])
        assert env.action_space(agent).contains(policies[i].act(obs[agent]))
    with pytest.raises(ValueError, match="belongs to agent 1"):
        policies[0].act(obs["mg2"])
    with pytest.raises(ValueError, match="shape"):
        policies[0].act(obs["mg1"][:-1])
    gen = sc.microgrids[0].generator  # marginal cost b + 2 a p: 110 USD/MWh at 0, 215.6 at 0.66 MW
    assert policies[0].generator_mw(gen.cost_b_usd_per_mwh - 1) == 0.0
    assert policies[0].generator_mw(150.0) == pytest.approx((150.0 - gen.cost_b_usd_per_mwh) / (2 * gen.cost_a_usd_per_mw2h))
    assert policies[0].generator_mw(1000.0) == gen.p_max_mw
    negative = obs["mg1"].copy()
    negative[2] = -0.2  # -20 USD/MWh: charge, no generator, curtail PV and wind
    np.testing.assert_array_equal(policies[0].act(negative), [-1.0, 0.0, 1.0, 1.0])


def test_random_policy_is_seeded_and_inside_bounds() -> None:
    low, high = np.array([-1, 0, 0, 0], np.float32), np.ones(4, np.float32)
    a, b = RandomPolicy(low, high, seed=5), RandomPolicy(low, high, seed=5)
    draws = np.array([a.act(np.zeros(30)) for _ in range(200)])
    np.testing.assert_array_equal(draws, [b.act(np.zeros(30)) for _ in range(200)])
    assert (draws >= low).all() and (draws <= high).all() and (draws[:, 0] < 0).any()


def test_rule_policy_sizes_the_battery_after_the_agreed_dispatch() -> None:
    """With consensus, the battery covers what the dispatched generator does not: it never exports."""
    policy = RulePolicy(agent_index=0, n_agents=3, layout="distributed", battery_p_max_mw=1.0, generator_p_max_mw=1.0,
                        cost_a_usd_per_mw2h=0.0, cost_b_usd_per_mwh=1000.0, min_history=1,
                        protocol_features=("dispatch_mw",))
    obs = np.zeros(policy.obs_size, np.float32)
    obs[3] = 0.8  # load 0.8 MW, no PV, no wind
    obs[-1] = 0.6  # the agreed dispatch
    obs[2] = 0.1
    for _ in range(3):
        policy.act(obs)  # a price history of 10 USD/MWh
    obs[2] = 1.0  # then 100 USD/MWh: a discharge price
    battery, generator, *_ = policy.act(obs)
    assert generator == pytest.approx(0.6)
    assert battery == pytest.approx(0.2)  # 0.8 - 0.6, not the whole 0.8 (which exported 0.6 MW)

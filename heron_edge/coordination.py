"""Coordination: which protocols an environment runs, what they tell the agents, and how trades settle.

One vertical protocol (``setpoint`` or ``price_signal``) and one horizontal (``p2p_trading`` or
``consensus``) may run together. Every step, before the agents decide, the system operator sends
the price (always; with ``price_signal`` it carries a congestion adder) and, with ``setpoint``, each
microgrid's exchange setpoint; with ``consensus`` the microgrids agree on the least-cost dispatch of
their generators to cover the part of their combined deficit above the feeder's import allowance
(option ``import_limit_mw``; each node starts from its own deficit minus an equal share of the
allowance, so only the sum, which is the shared demand, matters). After they decide, with ``p2p_trading`` they post
orders from their planned net position and a market clears them; the trades settle in the step's
costs. The centralized forms are computed here from the plant; the distributed forms run as roles
(``MicrogridRoles`` in each ProxyAgent, ``OperatorRoles`` in the SystemOperator) and must agree.

Per-agent protocol features, appended to observations (in this order, when the protocol runs):
  setpoint:     setpoint_mw   exchange setpoint of the coming step (MW, + import)
  consensus:    dispatch_mw   the agreed generator output for the coming step (MW)
  p2p_trading:  traded_mw     net MW bought through trades in the last step (+ bought)
                clearing_price  the last clearing price / 100 (USD/MWh / 100; 0 when nothing traded)
Settlement: exports are credited at ``export_price_ratio`` of the price. Traded energy replaces grid
energy: the billed exchange is the measured one minus the net traded MW, and each trade's cash (fee
included, split buyer/seller) is added. Order limit prices are each side's marginal value of energy
once its dispatch is decided (orders follow the decisions, so generation cost is already sunk): a
buyer bids what the grid would charge (the price), a seller asks what the grid would credit (the
export credit). Trades happen when the spread covers the fee, at the midpoint. The physical flows
are the plant's; trades move money, not power.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np

from heron_edge.errors import ConfigError, UsageError
from heron_edge.protocols import (
    Clearing,
    ConsensusProtocol,
    GeneratorCost,
    Link,
    Order,
    P2PTradingProtocol,
    PriceSignal,
    PriceSignalProtocol,
    SetpointProtocol,
)
from heron_edge.protocols.auction import orders_from_net

if TYPE_CHECKING:  # the gateway side runs these roles without the simulator installed
    from sim.plant import Measurements, Plant
    from sim.scenario import Scenario

PowerT = TypeVar("PowerT", float, np.ndarray)

ProtocolName = Literal["setpoint", "price_signal", "p2p_trading", "consensus"]
ConsensusForm = Literal["closed", "lockstep"]
"""How the centralized loop computes the consensus dispatch: ``closed``, the exact optimum at once; ``lockstep``,
the distributed nodes' own iteration run in one process (bit for bit what they agree on; rounds counted)."""
VERTICAL = ("setpoint", "price_signal")
HORIZONTAL = ("p2p_trading", "consensus")
UPSTREAM_ID = "system_operator"
POWER_MARGIN = 10.0
"""Received powers (telemetry, meter readings) must lie within this many times the site's ratings."""
CONSENSUS_IMPORT_LIMIT_MW = 1.5
"""Default of the consensus option ``import_limit_mw``: the feeder import left to the grid before the microgrids'
generators are dispatched (a coordination option; every other default lives in its protocol's config model)."""


def bill_usd(exchange_mw: np.ndarray, price_usd_per_mwh: float, export_price_ratio: float, dt_h: float) -> np.ndarray:
    """Energy cost of an exchange (MW, + import) over a step: imports at the price, exports credited at a fraction of it."""
    return np.where(exchange_mw > 0.0, exchange_mw, exchange_mw * export_price_ratio) * (price_usd_per_mwh * dt_h)


def parse_protocols(protocol: str | Sequence[str] | None) -> tuple[str, ...]:
    """The protocol names to run: at most one vertical and one horizontal."""
    names = () if protocol is None else (protocol,) if isinstance(protocol, str) else tuple(protocol)
    unknown = [n for n in names if n not in get_args(ProtocolName)]
    if unknown:
        raise ConfigError(f"unknown protocol {unknown}; choose from {', '.join(get_args(ProtocolName))}")
    if sum(n in VERTICAL for n in names) > 1 or sum(n in HORIZONTAL for n in names) > 1 or len(set(names)) != len(names):
        raise ConfigError(f"at most one vertical {VERTICAL} and one horizontal {HORIZONTAL} protocol, got {list(names)}")
    return names


@dataclass
class Signals:
    """What the coordination tells the agents before they decide (one entry per microgrid)."""

    price: PriceSignal
    setpoint_mw: np.ndarray | None = None
    dispatch_mw: np.ndarray | None = None
    consensus_rounds: int = 0


@dataclass
class Settlement:
    """The money side of a step: trades (if any) and the billed energy cost per microgrid."""

    clearing: Clearing | None
    traded_mw: np.ndarray
    trade_cash_usd: np.ndarray
    energy_cost_usd: np.ndarray


class Coordination:
    """The configured protocols of one environment, their centralized forms and the settlement."""

    def __init__(self, scenario: Scenario, protocol: str | Sequence[str] | None,
                 options: Mapping[str, Mapping[str, Any]], *, consensus_form: ConsensusForm = "closed") -> None:
        self.names = [m.name for m in scenario.microgrids]
        self.consensus_form: ConsensusForm = consensus_form
        self.protocols = parse_protocols(protocol)
        unknown = sorted(set(options) - set(self.protocols))
        if unknown:
            raise ConfigError(f"protocol_options for {unknown}, which do not run (protocol = {list(self.protocols)})")
        self.scenario = scenario
        self.dt_h = scenario.step_hours

        def opts(name: str, **fixed: Any) -> dict[str, Any]:
            return {**options.get(name, {}), **fixed}

        # without price_signal the price carries no congestion adder
        price_opts = opts("price_signal", operator_id=UPSTREAM_ID) if "price_signal" in self.protocols else \
            {"congestion_adder_usd_per_mwh": 0.0, "operator_id": UPSTREAM_ID}
        self.price = PriceSignalProtocol(price_opts)
        self.setpoint = SetpointProtocol(opts("setpoint", operator_id=UPSTREAM_ID)) if "setpoint" in self.protocols else None
        self.p2p = P2PTradingProtocol(opts("p2p_trading", market_id=UPSTREAM_ID)) if "p2p_trading" in self.protocols else None
        self.consensus: ConsensusProtocol | None = None
        self.import_allowance_mw = 0.0
        if "consensus" in self.protocols:
            consensus_opts = opts("consensus", nodes=tuple(self.names))
            self.import_allowance_mw = float(consensus_opts.pop("import_limit_mw", CONSENSUS_IMPORT_LIMIT_MW))
            self.consensus = ConsensusProtocol(consensus_opts)
        self.generators = [GeneratorCost(m.generator.cost_a_usd_per_mw2h, m.generator.cost_b_usd_per_mwh,
                                         m.generator.p_min_mw, m.generator.p_max_mw) for m in scenario.microgrids]
        self.feature_names: tuple[str, ...] = (
            (("setpoint_mw",) if self.setpoint else ()) + (("dispatch_mw",) if self.consensus else ())
            + (("traded_mw", "clearing_price") if self.p2p else ()))
        self._last_traded = np.zeros(len(self.names))
        self._last_clearing_price = 0.0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def power_limit_mw(self) -> float:
        """The largest power a message of this site may report (MW, either sign): :data:`POWER_MARGIN` times
        the feeder head's rating plus every microgrid's battery and generator ratings. Beyond it a value
        cannot be a measurement of this site, so receivers reject it (``bounds``)."""
        ratings = sum(m.battery.p_max_mw + m.generator.p_max_mw for m in self.scenario.microgrids)
        return POWER_MARGIN * (self.scenario.feeder_head_rating_mva + ratings)

    def reset(self) -> None:
        self._last_traded[:] = 0.0
        self._last_clearing_price = 0.0

    # ------------------------------------------------------------------ shared rules
    def head_loading_pu(self, last: Measurements) -> float:
        """Feeder-head import of the last step over the substation rating (0 when unknown)."""
        return self.head_loading_from_mw(last.feeder_head_mw)

    def head_loading_from_mw(self, feeder_head_mw: float | None) -> float:
        """A feeder-head import reading (MW; None or nan = unknown) over the substation rating (0 when unknown)."""
        if feeder_head_mw is None or not np.isfinite(feeder_head_mw):
            return 0.0
        return max(feeder_head_mw, 0.0) / self.scenario.feeder_head_rating_mva

    @staticmethod
    def needs_mw(load_mw: PowerT, pv_mw: PowerT, wind_mw: PowerT) -> PowerT:
        """Net need of each microgrid (an array) or of one (a float) before its dispatchable devices (MW, + deficit)."""
        return load_mw - pv_mw - wind_mw  # type: ignore[no-any-return]  # numpy types ndarray arithmetic as Any


    def demand_shares_mw(self, needs: np.ndarray) -> np.ndarray:
        """Each node's share of the shared demand: its deficit minus an equal share of the import allowance."""
        shares: np.ndarray = np.maximum(needs, 0.0) - self.import_allowance_mw / len(self.names)
        return shares

    def planned_net_mw(self, local: np.ndarray, action: np.ndarray, index: int) -> float:
        """A microgrid's planned net position (MW, + deficit) from its local features and normalised action."""
        mg = self.scenario.microgrids[index]
        load, pv, wind = local[0], local[1], local[2]
        return float(load - pv * (1.0 - action[2]) - wind * (1.0 - action[3])
                     - action[1] * mg.generator.p_max_mw - action[0] * mg.battery.p_max_mw)

    def order(self, local: np.ndarray, action: np.ndarray, index: int, price: float) -> Order:
        """A microgrid's order: bid its deficit at the import price, ask its surplus at the export credit."""
        net = self.planned_net_mw(local, action, index)
        limit = price if net > 0 else price * self.scenario.export_price_ratio
        return orders_from_net([self.names[index]], np.array([net]), np.array([limit]))[0]

    def agent_features(self, setpoint_mw: float | None, dispatch_mw: float | None, traded_mw: float,
                       clearing_price_usd_per_mwh: float) -> list[float]:
        """One agent's protocol features, the layout in the module docstring."""
        out: list[float] = []
        if self.setpoint:
            out.append(float(setpoint_mw if setpoint_mw is not None else self.setpoint.config.fallback_mw))
        if self.consensus:
            out.append(float(dispatch_mw if dispatch_mw is not None else 0.0))
        if self.p2p:
            out += [traded_mw, clearing_price_usd_per_mwh / 100.0]
        return out

    def features(self, signals: Signals) -> np.ndarray:
        """Every agent's protocol features (n x k), from the centralized signals and the last settlement."""
        return np.array([self.agent_features(None if signals.setpoint_mw is None else signals.setpoint_mw[i],
                                             None if signals.dispatch_mw is None else signals.dispatch_mw[i],
                                             float(self._last_traded[i]), self._last_clearing_price)
                         for i in range(len(self.names))]).reshape(len(self.names), self.n_features)

    # ------------------------------------------------------------------ centralized forms
    def signals(self, plant: Plant) -> Signals:
        """The centralized form of everything sent before the agents decide."""
        price = self.price.price(plant.price(), self.head_loading_pu(plant.latest()))
        forecast = plant.forecast()
        needs = self.needs_mw(forecast.load_mw, forecast.pv_mw, forecast.wind_mw)
        signals = Signals(price=price)
        if self.setpoint:
            signals.setpoint_mw = self.setpoint.allocate(needs)
        if self.consensus:
            shares = self.demand_shares_mw(needs)
            if self.consensus_form == "lockstep":  # what the distributed nodes compute, bit for bit
                nodes = self.consensus.dispatch_lockstep(self.generators, shares.tolist())
                signals.dispatch_mw = np.array([node.p_mw for node in nodes])
                signals.consensus_rounds = max(node.rounds for node in nodes)
            else:  # above total capacity every unit runs at p_max; at or below zero every unit at p_min
                signals.dispatch_mw = self.consensus.dispatch(self.generators, float(shares.sum())).p_mw
        return signals

    def clear(self, locals_: np.ndarray, actions: np.ndarray, price: float) -> Clearing | None:
        """The centralized market: one order book from every microgrid's order."""
        if not self.p2p:
            return None
        return self.p2p.clear([self.order(locals_[i], actions[i], i, price) for i in range(len(self.names))])

    def settle(self, last: Measurements, signals: Signals, clearing: Clearing | None) -> Settlement:
        """Bill the step: the grid exchange net of trades at the signalled price, plus the trades' cash."""
        return self.settle_exchange(last.exchange_mw, signals, clearing)

    def settle_exchange(self, exchange_mw: np.ndarray, signals: Signals, clearing: Clearing | None) -> Settlement:
        """:meth:`settle` from the measured exchange alone (MW per microgrid, + import), e.g. a SIL plant's record."""
        n = len(self.names)
        traded = clearing.net_mw(self.names) if clearing else np.zeros(n)
        cash = clearing.cash_usd(self.names, self.dt_h) if clearing else np.zeros(n)
        billed = bill_usd(np.asarray(exchange_mw) - traded, signals.price.total_usd_per_mwh,
                          self.scenario.export_price_ratio, self.dt_h)
        self._last_traded = traded
        self._last_clearing_price = clearing.price_usd_per_mwh if clearing and clearing.price_usd_per_mwh is not None else 0.0
        return Settlement(clearing=clearing, traded_mw=traded, trade_cash_usd=cash, energy_cost_usd=billed - cash)


class MicrogridRoles:
    """A microgrid's side of the distributed protocols (used by its ProxyAgent), over its own Link."""

    def __init__(self, coordination: Coordination, link: Link, index: int) -> None:
        self.coordination = coordination
        self.link = link
        self.index = index

    async def prepare(self) -> None:
        c = self.coordination
        if c.setpoint:
            await c.setpoint.prepare(self.link, "microgrid")
        if c.consensus:
            await c.consensus.prepare(self.link, "node")
        if c.p2p:
            await c.p2p.prepare(self.link, "participant")

    def reset(self, step: int) -> None:
        self.link.reset(step)

    async def before_decision(self, step: int, local: np.ndarray) -> tuple[float | None, float | None, int]:
        """Receive this step's setpoint and run the dispatch consensus: (setpoint, dispatch, rounds)."""
        c, link = self.coordination, self.link
        link.step = step
        setpoint = dispatch = None
        rounds = 0
        if c.setpoint:
            setpoint = (await c.setpoint.receive(link)).p_mw
        if c.consensus:
            share = c.demand_shares_mw(c.needs_mw(local[0:1], local[1:2], local[2:3]))  # needs only its own data
            result = await c.consensus.dispatch_node(link, c.generators[self.index], float(share[0]))
            dispatch, rounds = result.p_mw, result.rounds
        return setpoint, dispatch, rounds

    async def after_decision(self, step: int, local: np.ndarray, action: np.ndarray, price: float) -> Clearing | None:
        """Post this step's order and wait for the clearing (None when it did not come in time)."""
        c = self.coordination
        if not c.p2p:
            return None
        self.link.step = step
        confirmation = await c.p2p.participant(self.link, c.order(local, action, self.index, price))
        return confirmation.clearing


class OperatorRoles:
    """The system operator's side: price (always), setpoints, and the market when trading runs."""

    def __init__(self, coordination: Coordination, link: Link) -> None:
        self.coordination = coordination
        self.link = link

    async def prepare(self) -> None:
        c = self.coordination
        await c.price.prepare(self.link, "operator")
        if c.setpoint:
            await c.setpoint.prepare(self.link, "operator")
        if c.p2p:
            await c.p2p.prepare(self.link, "market")

    def reset(self, step: int) -> None:
        self.link.reset(step)

    async def before_decision(self, step: int, hourly_price: float, head_loading_pu: float,
                              needs: np.ndarray | None) -> tuple[PriceSignal, np.ndarray | None]:
        """Broadcast the price and, with the setpoint protocol, send each microgrid its setpoint."""
        c, link = self.coordination, self.link
        link.step = step
        signal = await c.price.operator(link, hourly_price, head_loading_pu)
        setpoints = None
        if c.setpoint:
            if needs is None:
                raise UsageError("the setpoint protocol needs the microgrids' reported needs")
            setpoints = await c.setpoint.operator(link, needs, c.names)
        return signal, setpoints

    async def market(self, step: int) -> Clearing | None:
        c = self.coordination
        if not c.p2p:
            return None
        self.link.step = step
        return await c.p2p.market(self.link, c.names)

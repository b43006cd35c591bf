"""HA tuning knobs (:class:`HASettings`), validated as a whole.

Times are seconds on a monotonic clock. The defaults aim at a node loss costing under 1.5 s of
writes on a LAN: the primary renews its lease every 0.1 s; if renewals stop, it fences itself
``lease_s - fence_early_s`` (0.79 s) after its last acknowledged renewal was sent, and the arbiter
may promote another node ``arbiter_wait_s`` (1.11 s) after the last grant it gave. What these
defaults assume and which knobs buy tolerance with speed: :mod:`ram.ha.lease` ("Choosing the
numbers").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["HASettings"]

Seconds = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]


class HASettings(BaseModel):
    """Everything the pure HA logic needs to know about timing and replication policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lease_s: Seconds = Field(
        1.0, description="Primary lease: a renewal sent at t is valid until t + lease_s on the primary's clock."
    )
    renew_interval_s: Seconds = Field(0.1, description="How often the primary sends a lease renewal.")
    clock_drift: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = Field(
        0.01,
        description="Bound on the rate error of every monotonic clock against real time (0.01: a clock runs "
        "between 0.99 and 1.01 seconds per real second).",
    )
    safety_margin_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = Field(
        0.1, description="Extra wait before the arbiter treats a lease as expired (scheduling / GC delays)."
    )
    fence_duration_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = Field(
        0.2,
        description="Upper bound (primary's clock) between starting to fence and PostgreSQL no longer accepting "
        "writes; the primary starts fencing that much before its lease ends.",
    )
    report_interval_s: Seconds = Field(0.25, description="How often every node reports its PostgreSQL status.")
    report_timeout_s: Seconds = Field(
        1.5, description="The arbiter treats a member whose last report is older than this as unreachable."
    )
    maximum_lag_on_failover: Annotated[int, Field(ge=0)] = Field(
        1024 * 1024,
        description="Asynchronous mode: a replica further behind the primary's last known WAL position (bytes) "
        "is not promoted.",
    )
    primary_start_timeout_s: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = Field(
        30.0,
        description="A primary whose PostgreSQL is down is restarted in place for this long; after that its "
        "lease is no longer renewed and a failover may happen. Also bounds a promotion.",
    )
    synchronous_mode: Literal["off", "on", "quorum"] = Field(
        "off",
        description="off: asynchronous; on: FIRST k (s1..sk), every listed standby holds every acknowledged "
        "commit; quorum: ANY k (s1..sn).",
    )
    synchronous_node_count: Annotated[int, Field(ge=1, le=100)] = Field(
        1, description="k: how many standbys must confirm a commit."
    )
    synchronous_strict: bool = Field(
        False,
        description="True: never fall back to asynchronous replication (writes wait when no standby is healthy).",
    )
    rewind_fallback_to_clone: bool = Field(
        True, description="A former primary whose pg_rewind failed is re-cloned from the new primary."
    )

    @property
    def fence_early_s(self) -> float:
        """How long before the end of its lease (own clock) the holder starts fencing."""
        return self.lease_s * self.clock_drift + self.fence_duration_s

    @property
    def arbiter_wait_s(self) -> float:
        """How long after a grant (arbiter's clock) the arbiter treats the lease as expired."""
        return self.arbiter_wait_for(self.lease_s)

    def arbiter_wait_for(self, holder_lease_s: float) -> float:
        """:attr:`arbiter_wait_s` for a holder whose own lease is ``holder_lease_s``: the longer of
        that and ours, stretched by the drift bound, plus the margin (see ram.ha.lease)."""
        return max(self.lease_s, holder_lease_s) * (1 + self.clock_drift) + self.safety_margin_s

    @model_validator(mode="after")
    def _relations(self) -> HASettings:
        problems = []
        if self.renew_interval_s * 3 > self.lease_s:
            problems.append(
                f"renew_interval_s ({self.renew_interval_s}) * 3 must be <= lease_s ({self.lease_s}): "
                "the primary must get several chances to renew"
            )
        usable = self.lease_s - self.fence_early_s
        if usable < 2 * self.renew_interval_s:
            problems.append(
                f"lease_s - (lease_s * clock_drift + fence_duration_s) = {usable:.3f} must be >= "
                f"2 * renew_interval_s ({2 * self.renew_interval_s}): lease_s is too short for fence_duration_s"
            )
        if self.report_interval_s * 2 > self.report_timeout_s:
            problems.append(
                f"report_interval_s ({self.report_interval_s}) * 2 must be <= report_timeout_s "
                f"({self.report_timeout_s}): one lost report must not make a member unreachable"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

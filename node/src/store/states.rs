//! The states a visit, a settlement record and a home-side claim go through, and the
//! kinds of outbox item, as enums: one vocabulary for the store (whose CHECK constraints
//! list the same strings, migration V13) and the settlement code, and the legal
//! transitions of each in one place (`can_become`). An outbox item has no state of its
//! own: it is queued until delivered, then removed; its kind never changes.

use std::{fmt, str::FromStr};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A state string that is none of its kind's states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// An enum of states stored as lower-case strings.
macro_rules! states {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident => $s:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every state, in the order of the schema's CHECK constraint.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The string stored and sent on the wire.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $s,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    _ => Err(UnknownState {
                        what: $what,
                        value: s.to_owned(),
                        expected: [$($s),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: UnknownState| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

states!(
    /// A visit at the treatment node.
    VisitState, "visit state", {
        /// Registered or admitted; fees may be uploaded.
        Open => "open",
        /// Discharged (an inpatient visit must be, before settlement).
        Closed => "closed",
        /// Has a live settlement (settled, provisional or refused); its fees are frozen.
        Settled => "settled",
        /// Registration or admission withdrawn (CancelVisit, NHSA 2202 / 2404) before any
        /// settlement: nothing may be uploaded or settled on it again.
        Cancelled => "cancelled",
    }
);

impl VisitState {
    /// Whether a visit in this state may be moved to `next`. Staying is always legal
    /// (a provisional settlement's confirmation settles a settled visit again).
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use VisitState::{Cancelled, Closed, Open, Settled};
        self == next
            || matches!(
                (self, next),
                // CloseVisit; a settlement.
                (Open, Closed | Settled) | (Closed, Settled)
                // Its settlement cancelled: back to open or closed, as it was.
                | (Settled, Open | Closed)
                // ReopenVisit (discharge undone); CancelVisit, final.
                | (Closed, Open) | (Open | Closed, Cancelled)
            )
    }

    /// The state a visit returns to when its settlement is cancelled.
    #[must_use]
    pub fn unsettled(closed: bool) -> Self {
        if closed { Self::Closed } else { Self::Open }
    }
}

states!(
    /// A settlement record at the treatment node.
    SettlementState, "settlement state", {
        /// An intent recorded before the home node is asked; its outcome is not known.
        Pending => "pending",
        /// Committed at the home node.
        Settled => "settled",
        /// Settled under the home policy's offline rule; the outbox delivers its claim.
        Provisional => "provisional",
        /// Direct settlement refused: the patient paid in full.
        Refused => "refused",
        /// An intent that never took effect.
        Failed => "failed",
        /// A settlement with a reversal record.
        Cancelled => "cancelled",
        /// A provisional claim its home node refused: the advance is the agency's to
        /// recover.
        Disputed => "disputed",
        /// A reversal record (a cancellation or 冲正) of another settlement.
        Reversal => "reversal",
    }
);

impl SettlementState {
    /// Whether a record may be inserted in this state.
    #[must_use]
    pub fn can_start(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Provisional | Self::Refused | Self::Reversal
        )
    }

    /// Whether a record in this state may be moved to `next`. Staying is always legal
    /// (a retried intent records its new split, still pending).
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use SettlementState::{
            Cancelled, Disputed, Failed, Pending, Provisional, Refused, Settled,
        };
        self == next
            || matches!(
                (self, next),
                // The home node's answer; or the offline rule while it is in doubt.
                (Pending, Settled | Failed | Provisional)
                // The home node confirms or refuses a provisional claim.
                | (Provisional, Settled | Disputed)
                // CancelSettlement, 冲正.
                | (Settled | Provisional | Refused, Cancelled)
                // A provisional claim cancelled before its home node refused it.
                | (Cancelled, Disputed)
            )
    }
}

states!(
    /// A claim at its home node.
    ClaimState, "claim state", {
        /// Committed: in the person's accumulators and owed to the treatment region.
        Committed => "committed",
        /// Reversed by its treatment region.
        Reversed => "reversed",
    }
);

impl ClaimState {
    /// Whether a claim in this state may be moved to `next`.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        self == next || (self, next) == (Self::Committed, Self::Reversed)
    }
}

states!(
    /// What an outbox item delivers to its home node.
    OutboxKind, "outbox kind", {
        /// A provisional claim (CommitClaim).
        Commit => "commit",
        /// A reversal of a claim (ReverseClaim).
        Reverse => "reverse",
        /// An audit deduction (PushAdjustment).
        Adjust => "adjust",
    }
);

states!(
    /// A file of the NHSA gateway's file transfer (9101 / 9102).
    NhsaFileKind, "NHSA file kind", {
        /// Uploaded by an institution with 9101 (a 3202 detail file).
        Upload => "upload",
        /// Written by the node: a 3202 result, downloaded with 9102.
        Result => "result",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transition the node performs, with where it does it.
    const SETTLEMENT_MOVES: &[(SettlementState, SettlementState, &str)] = {
        use SettlementState::*;
        &[
            (Pending, Settled, "records::finish_committed"),
            (Pending, Pending, "settle::settle_remote retry"),
            (Pending, Failed, "store::settlements::fail_pending"),
            (Pending, Provisional, "offline::take_intent"),
            (Provisional, Settled, "outbox::deliver_commit"),
            (Provisional, Disputed, "outbox::deliver_commit refused"),
            (
                Cancelled,
                Disputed,
                "outbox::deliver_commit refused after a cancel",
            ),
            (Settled, Cancelled, "cancel::cancel_in_tx"),
            (Provisional, Cancelled, "cancel::cancel_in_tx"),
            (Refused, Cancelled, "cancel::cancel_in_tx"),
        ]
    };
    const SETTLEMENT_STARTS: &[SettlementState] = &[
        SettlementState::Pending, // settle::open_settlement, settle::settle_local
        SettlementState::Provisional, // offline::settle_offline
        SettlementState::Refused, // offline::settle_offline
        SettlementState::Reversal, // cancel::cancel_in_tx
    ];
    const VISIT_MOVES: &[(VisitState, VisitState, &str)] = {
        use VisitState::*;
        &[
            (Open, Closed, "visit::close_visit"),
            (
                Open,
                Settled,
                "records::finish_committed, offline::settle_offline",
            ),
            (
                Closed,
                Settled,
                "records::finish_committed, offline::settle_offline",
            ),
            (
                Settled,
                Settled,
                "records::finish_committed of a provisional claim",
            ),
            (Settled, Open, "cancel::cancel_in_tx"),
            (Settled, Closed, "cancel::cancel_in_tx"),
            (Closed, Open, "visit_undo::reopen_visit"),
            (Open, Cancelled, "visit_undo::cancel_visit"),
            (Closed, Cancelled, "visit_undo::cancel_visit"),
        ]
    };

    #[test]
    fn every_transition_the_node_performs_is_legal() {
        for &(from, to, at) in SETTLEMENT_MOVES {
            assert!(from.can_become(to), "{from} → {to} ({at})");
        }
        for &s in SETTLEMENT_STARTS {
            assert!(s.can_start(), "{s}");
        }
        for &(from, to, at) in VISIT_MOVES {
            assert!(from.can_become(to), "{from} → {to} ({at})");
        }
        assert!(ClaimState::Committed.can_become(ClaimState::Reversed));
    }

    #[test]
    fn illegal_transitions_are_refused() {
        use SettlementState as S;
        for (from, to) in [
            (S::Settled, S::Pending),
            (S::Settled, S::Failed),
            (S::Failed, S::Settled),
            (S::Failed, S::Pending),
            (S::Cancelled, S::Settled),
            (S::Cancelled, S::Provisional),
            (S::Refused, S::Settled),
            (S::Reversal, S::Cancelled),
            (S::Disputed, S::Settled),
            (S::Pending, S::Cancelled),
            (S::Pending, S::Refused),
        ] {
            assert!(!from.can_become(to), "{from} → {to}");
        }
        // Only the listed moves: every other pair of different states is refused.
        for &from in S::ALL {
            for &to in S::ALL {
                let listed =
                    from == to || SETTLEMENT_MOVES.iter().any(|m| (m.0, m.1) == (from, to));
                assert_eq!(from.can_become(to), listed, "{from} → {to}");
            }
        }
        for s in [S::Settled, S::Failed, S::Cancelled, S::Disputed] {
            assert!(!s.can_start(), "{s}");
        }
        use VisitState as V;
        for &from in V::ALL {
            for &to in V::ALL {
                let listed = VISIT_MOVES.iter().any(|m| (m.0, m.1) == (from, to)) || (from == to);
                assert_eq!(from.can_become(to), listed, "{from} → {to}");
            }
        }
        assert!(!V::Settled.can_become(V::Cancelled));
        assert!(!V::Cancelled.can_become(V::Open));
        assert!(!ClaimState::Reversed.can_become(ClaimState::Committed));
    }

    #[test]
    fn states_round_trip_through_their_strings() {
        fn round_trip<T>(all: &[T])
        where
            T: Copy + fmt::Display + FromStr<Err = UnknownState> + PartialEq + fmt::Debug,
        {
            for &s in all {
                assert_eq!(s.to_string().parse::<T>(), Ok(s));
            }
        }
        round_trip(VisitState::ALL);
        round_trip(SettlementState::ALL);
        round_trip(ClaimState::ALL);
        round_trip(OutboxKind::ALL);
        assert_eq!(SettlementState::Provisional.as_str(), "provisional");
        let e = "Settled"
            .parse::<SettlementState>()
            .expect_err("case matters");
        assert_eq!(
            e.to_string(),
            "unknown settlement state \"Settled\"; expected one of: pending, settled, provisional, refused, failed, cancelled, disputed, reversal"
        );
        let e = "".parse::<VisitState>().expect_err("empty");
        assert_eq!(
            e.to_string(),
            "unknown visit state \"\"; expected one of: open, closed, settled, cancelled"
        );
    }

    #[test]
    fn states_bind_and_read_as_their_strings() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        let s: String = conn
            .query_row("SELECT ?1", [SettlementState::Disputed], |r| r.get(0))
            .expect("bind");
        assert_eq!(s, "disputed");
        let v: VisitState = conn
            .query_row("SELECT 'closed'", [], |r| r.get(0))
            .expect("read");
        assert_eq!(v, VisitState::Closed);
        let bad = conn
            .query_row("SELECT 'gone'", [], |r| r.get::<_, OutboxKind>(0))
            .expect_err("unknown kind");
        assert!(
            bad.to_string().contains("unknown outbox kind \"gone\""),
            "{bad}"
        );
    }
}

//! The states of a clearing round, for both sides of it, in one place: the coordinator's
//! round ([`RoundState`]: what the operator sees in `Round.state`, upper case on the
//! wire and in the coordinator's store) and each participant's own record of the same
//! round ([`ParticipantState`]: lower case in the node's store and in the agency's
//! `ClearingRound.state`). The two machines share one vocabulary: every word is defined
//! here once, with its legal successors, and [`ParticipantState::during`] says which
//! participant states a coordinator state goes with. Both stores refuse any other value
//! (a CHECK constraint), and a move not listed here is refused before it is written.

use std::{fmt, str::FromStr};

use crate::{Error, Result};

macro_rules! state_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every state, in the order a round goes through them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire name.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }

            /// Parses the stored or wire name (exactly: stores and the wire only hold
            /// the names of [`Self::as_str`]).
            pub fn parse(s: &str) -> Result<Self> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    other => Err(Error::invalid(
                        "state",
                        format!(
                            "unknown round state {}; expected one of {}",
                            $crate::error::quoted(other),
                            [$($wire),+].join(", ")
                        ),
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }
    };
}

state_enum! {
    /// A round at the coordinator. It moves OPEN → COLLECTING → RECONCILING →
    /// (DISPUTED → COLLECTING …) → STATEMENT_ISSUED → CONFIRMED → SETTLED, or ABORTED
    /// before any confirmation.
    RoundState {
        /// Opened by the operator; nothing asked yet.
        Open = "OPEN",
        /// Asking every participant for its positions.
        Collecting = "COLLECTING",
        /// Every position is in; pairs are being compared (and drilled into).
        Reconciling = "RECONCILING",
        /// Some pairs disagree; the operator resolves (carries them forward) or aborts.
        Disputed = "DISPUTED",
        /// Netted; waiting for every participant's confirmation.
        StatementIssued = "STATEMENT_ISSUED",
        /// Every participant confirmed; waiting for the transfers to be recorded.
        Confirmed = "CONFIRMED",
        /// Every transfer recorded; the participants mark the period cleared.
        Settled = "SETTLED",
        /// Given up before any confirmation; the participants release its records.
        Aborted = "ABORTED",
    }
}

impl RoundState {
    /// Whether a round in this state may be written as `next`. A state may be written
    /// again (its note changes while it waits on a participant) but for the two ends.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use RoundState::{
            Aborted, Collecting, Confirmed, Disputed, Open, Reconciling, Settled, StatementIssued,
        };
        match self {
            Open => matches!(next, Collecting | Aborted),
            Collecting => matches!(next, Collecting | Reconciling | Aborted),
            Reconciling => matches!(next, Reconciling | Disputed | StatementIssued | Aborted),
            Disputed => matches!(next, Collecting | Aborted),
            StatementIssued => matches!(next, StatementIssued | Confirmed | Aborted),
            Confirmed => matches!(next, Settled),
            Settled | Aborted => false,
        }
    }

    /// Checks a move, with the error the operator sees when it is not legal.
    pub fn check_move(self, next: Self, round: &str) -> Result<()> {
        if self.can_become(next) {
            return Ok(());
        }
        Err(Error::Precondition(format!(
            "round {round} is {self}; it cannot become {next}"
        )))
    }

    /// Neither waits on anything any more nor may be moved (the participants' clear
    /// marks of a SETTLED round are still collected: see the round's `missing`).
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, RoundState::Settled | RoundState::Aborted)
    }
}

state_enum! {
    /// A round as one participant (a node) records it. It moves freezing → frozen →
    /// confirmed → cleared, or to released (the coordinator aborted the round, or a
    /// newer round found it left over) from anything not cleared.
    ParticipantState {
        /// Its records are being frozen, in bounded steps; nothing is confirmed or
        /// excluded meanwhile.
        Freezing = "freezing",
        /// Its records are frozen and reported; disputed ones may be excluded.
        Frozen = "frozen",
        /// This node confirmed the statement; its records no longer change.
        Confirmed = "confirmed",
        /// The coordinator settled the round; its records are cleared for good.
        Cleared = "cleared",
        /// Let go without clearing; its records go to the next round.
        Released = "released",
    }
}

impl ParticipantState {
    /// Whether a round recorded in this state may be written as `next`. Released may be
    /// written again (a repeated release), nothing moves after cleared.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use ParticipantState::{Cleared, Confirmed, Freezing, Frozen, Released};
        match self {
            Freezing => matches!(next, Frozen | Released),
            Frozen => matches!(next, Confirmed | Released),
            Confirmed => matches!(next, Cleared | Released),
            Released => matches!(next, Released),
            Cleared => false,
        }
    }

    /// Checks a move, with the error the coordinator sees when it is not legal.
    pub fn check_move(self, next: Self, round: &str) -> Result<()> {
        if self.can_become(next) {
            return Ok(());
        }
        Err(Error::Precondition(format!(
            "round {round} is {self} here; it cannot become {next}"
        )))
    }

    /// Holds its records: they are in this round and in no other.
    #[must_use]
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ParticipantState::Freezing | ParticipantState::Frozen | ParticipantState::Confirmed
        )
    }

    /// The states a participant that did everything asked of it so far records while
    /// the coordinator's round is in `round` (a participant not yet reached is one step
    /// behind; one that never took part has no record at all).
    #[must_use]
    pub fn during(round: RoundState) -> &'static [ParticipantState] {
        use ParticipantState::{Cleared, Confirmed, Frozen, Released};
        match round {
            RoundState::Open => &[],
            RoundState::Collecting | RoundState::Reconciling | RoundState::Disputed => &[Frozen],
            RoundState::StatementIssued => &[Frozen, Confirmed],
            RoundState::Confirmed => &[Confirmed],
            RoundState::Settled => &[Confirmed, Cleared],
            RoundState::Aborted => &[Released],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for s in RoundState::ALL {
            assert_eq!(RoundState::parse(s.as_str()), Ok(*s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for s in ParticipantState::ALL {
            assert_eq!(s.as_str().parse::<ParticipantState>(), Ok(*s));
        }
        assert_eq!(
            RoundState::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            [
                "OPEN",
                "COLLECTING",
                "RECONCILING",
                "DISPUTED",
                "STATEMENT_ISSUED",
                "CONFIRMED",
                "SETTLED",
                "ABORTED"
            ]
        );
        assert_eq!(
            ParticipantState::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["freezing", "frozen", "confirmed", "cleared", "released"]
        );
        // The two sides' names are never mixed up: each parses only its own.
        let e = RoundState::parse("confirmed").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid state: unknown round state \"confirmed\"; expected one of OPEN, COLLECTING, RECONCILING, DISPUTED, STATEMENT_ISSUED, CONFIRMED, SETTLED, ABORTED"
        );
        assert!(ParticipantState::parse("CONFIRMED").is_err());
        assert!(ParticipantState::parse("").is_err());
    }

    #[test]
    fn coordinator_moves() {
        use RoundState::*;
        let legal = [
            (Open, Collecting),
            (Open, Aborted),
            (Collecting, Collecting),
            (Collecting, Reconciling),
            (Collecting, Aborted),
            (Reconciling, Reconciling),
            (Reconciling, Disputed),
            (Reconciling, StatementIssued),
            (Reconciling, Aborted),
            (Disputed, Collecting),
            (Disputed, Aborted),
            (StatementIssued, StatementIssued),
            (StatementIssued, Confirmed),
            (StatementIssued, Aborted),
            (Confirmed, Settled),
        ];
        for from in RoundState::ALL {
            for to in RoundState::ALL {
                assert_eq!(
                    from.can_become(*to),
                    legal.contains(&(*from, *to)),
                    "{from} → {to}"
                );
            }
        }
        assert_eq!(
            Confirmed.check_move(Aborted, "2026-03-r1").unwrap_err(),
            Error::Precondition("round 2026-03-r1 is CONFIRMED; it cannot become ABORTED".into())
        );
        assert!(Settled.is_final() && Aborted.is_final() && !Confirmed.is_final());
    }

    #[test]
    fn participant_moves() {
        use ParticipantState::*;
        let legal = [
            (Freezing, Frozen),
            (Freezing, Released),
            (Frozen, Confirmed),
            (Frozen, Released),
            (Confirmed, Cleared),
            (Confirmed, Released),
            (Released, Released),
        ];
        for from in ParticipantState::ALL {
            for to in ParticipantState::ALL {
                assert_eq!(
                    from.can_become(*to),
                    legal.contains(&(*from, *to)),
                    "{from} → {to}"
                );
            }
        }
        assert_eq!(
            Released
                .check_move(Confirmed, "R1")
                .unwrap_err()
                .to_string(),
            "round R1 is released here; it cannot become confirmed"
        );
        assert_eq!(
            ParticipantState::ALL
                .iter()
                .filter(|s| s.is_live())
                .collect::<Vec<_>>(),
            [&Freezing, &Frozen, &Confirmed]
        );
    }

    /// Every participant state a coordinator state goes with is one a participant
    /// reaches from a state that goes with the coordinator state before.
    #[test]
    fn the_two_machines_agree() {
        for from in RoundState::ALL {
            let before = ParticipantState::during(*from);
            for to in RoundState::ALL.iter().filter(|to| from.can_become(**to)) {
                for q in ParticipantState::during(*to) {
                    assert!(
                        before.is_empty() || before.iter().any(|p| p == q || p.can_become(*q)),
                        "{from} → {to}: no participant state of {from} becomes {q}"
                    );
                }
            }
        }
        assert_eq!(
            ParticipantState::during(RoundState::Aborted),
            [ParticipantState::Released]
        );
    }
}

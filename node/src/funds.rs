//! Adjustments between agencies outside claims: audit deductions (审核扣款) recorded by
//! the treatment agency and reserve movements (储备金). The sender records its ledger
//! side and queues the record for the counterparty in the same transaction; the
//! counterparty mirrors it on delivery. Both sides derive the same period from the
//! record's creation time, so the pair's digests agree.

use prost::Message;
use rusqlite::Connection;
use yidi_common::{
    money::{self, Sign},
    period::{self, Period},
    proto,
    region::RegionCode,
};

use crate::store::states::OutboxKind;
use crate::{
    Error, Result,
    settlement::treatment::now_ms,
    store::{
        funds,
        ledger::{self, Side},
        outbox,
    },
};

/// Records this node's side of an adjustment (sender or receiver alike): the ledger
/// record and, for reserve movements, the balance.
pub fn apply(conn: &Connection, own: RegionCode, a: &proto::AdjustmentRequest) -> Result<String> {
    let own = own.as_str();
    let (side, counterparty) = if a.payee == own {
        (Side::Receivable, a.payer.as_str())
    } else if a.payer == own {
        (Side::Payable, a.payee.as_str())
    } else {
        return Err(Error::invalid(
            "payer",
            format!("this node ({own}) is neither payer nor payee"),
        ));
    };
    let amount = money::to_fen(money::parse(&a.amount, "amount", Sign::Any)?);
    let at = period::parse_ts(&a.created_at, "created_at")?;
    let period = Period::of(at).to_string();
    if a.kind.starts_with("reserve_") {
        let alarm = money::parse_opt(&a.alarm_threshold, "alarm_threshold", Sign::NonNegative)?
            .map(money::to_fen);
        funds::move_reserve(conn, &a.payer, &a.payee, amount, alarm)?;
    }
    ledger::record(
        conn,
        &ledger::Entry {
            entry_id: &a.entry_id,
            side,
            counterparty,
            period: &period,
            kind: &a.kind,
            claim_id: &a.claim_id,
            amount_fen: amount,
        },
        &period::now_rfc3339(),
    )?;
    Ok(period)
}

/// Records an adjustment created here and queues it for the counterparty.
pub fn originate(
    conn: &Connection,
    own: RegionCode,
    a: &proto::AdjustmentRequest,
) -> Result<String> {
    let period = apply(conn, own, a)?;
    let other = if a.payer == own.as_str() {
        &a.payee
    } else {
        &a.payer
    };
    outbox::enqueue(
        conn,
        OutboxKind::Adjust,
        other,
        &a.entry_id,
        &a.encode_to_vec(),
        &a.created_at,
        now_ms(),
    )?;
    Ok(period)
}

//! Settlement: the home side (eligibility, committing and reversing claims against the
//! person's accumulators) and the treatment side (visits, fee lines, pre-settle, settle,
//! cancel, 冲正, recovery of in-doubt claims, the outbox to unreachable home nodes).

pub mod bill;
pub mod home;
pub mod outbox;
pub mod treatment;

use chrono::NaiveDate;
use yidi_common::{
    engine::{self, Line},
    money, proto,
    types::{CatalogueClass, FilingType},
};

use crate::{Error, Result, store::visits::LineRec};

/// A stored fee line as the engine's input.
pub fn engine_line(l: &LineRec) -> Result<Line> {
    Ok(Line {
        line_no: l.line_no.clone(),
        item_code: l.item_code.clone(),
        class: CatalogueClass::parse(&l.class, "class")?,
        first_selfpay_ratio: l
            .first_selfpay_ratio
            .parse()
            .map_err(|_| Error::Internal("stored ratio unreadable".into()))?,
        price_cap: l.price_cap_fen.map(money::from_fen),
        quantity: engine::parse_quantity(&l.quantity, "quantity")?,
        unit_price: money::from_fen(l.unit_price_fen),
        amount: money::from_fen(l.amount_fen),
    })
}

/// A stored fee line on the wire.
#[must_use]
pub fn classified_line(l: &LineRec) -> proto::ClassifiedLine {
    proto::ClassifiedLine {
        line: Some(proto::FeeLine {
            line_no: l.line_no.clone(),
            item_code: l.item_code.clone(),
            quantity: l.quantity.clone(),
            unit_price: money::format(money::from_fen(l.unit_price_fen)),
            amount: money::format(money::from_fen(l.amount_fen)),
            service_date: l.service_date.clone(),
        }),
        class: CatalogueClass::parse(&l.class, "class")
            .map(CatalogueClass::to_proto)
            .unwrap_or_default(),
        first_selfpay_ratio: l.first_selfpay_ratio.clone(),
        price_cap: money::format_opt(l.price_cap_fen.map(money::from_fen)),
        item_name: l.item_name.clone(),
    }
}

/// Parses a wire date that the protocol requires.
pub fn wire_date(s: &str, field: &str) -> Result<NaiveDate> {
    Ok(yidi_common::period::parse_date(s, field)?)
}

/// Amounts of a split in fen: (medfee, fund, account, cash).
pub fn split_fen(s: &proto::Split) -> Result<(i64, i64, i64, i64)> {
    let f = |v: &str, name: &str| -> Result<i64> {
        Ok(money::to_fen(money::parse(v, name, money::Sign::Any)?))
    };
    Ok((
        f(&s.medfee_sumamt, "split.medfee_sumamt")?,
        f(&s.fund_pay_sumamt, "split.fund_pay_sumamt")?,
        f(&s.acct_pay, "split.acct_pay")?,
        f(&s.psn_cash_pay, "split.psn_cash_pay")?,
    ))
}

/// The filing type a split applied, for display.
#[must_use]
pub fn applied_filing(s: &proto::Split) -> Option<FilingType> {
    FilingType::from_proto(s.applied_filing_type, "applied_filing_type").ok()
}

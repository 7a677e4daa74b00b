//! Read-only views of an institution's visit for transports that need more than the
//! HospitalService answers carry (the NHSA gateway checks a settlement's declared
//! total against the uploaded bill before settling, and lists a visit's fee lines for
//! its fee-detail query). The same ownership rule as every treatment call: a visit is
//! read only by the institution that opened it.

use rust_decimal::Decimal;
use yidi_common::{error::quoted, money};

use crate::{
    Error, Result,
    context::NodeState,
    store::visits::{self, LineRec, VisitRec},
};

/// A visit with its fee lines.
#[derive(Debug, Clone)]
pub struct VisitBill {
    pub visit: VisitRec,
    pub lines: Vec<LineRec>,
}

impl VisitBill {
    /// The sum of the lines' amounts.
    #[must_use]
    pub fn total(&self) -> Decimal {
        money::from_fen(self.lines.iter().map(|l| l.amount_fen).sum())
    }
}

/// The visit `visit_id` of `institution` with its lines.
pub async fn visit_bill(st: &NodeState, institution: &str, visit_id: &str) -> Result<VisitBill> {
    let (inst, vid) = (institution.to_owned(), visit_id.to_owned());
    st.store
        .read(move |conn| {
            let visit = visits::get(conn, &vid)?.ok_or_else(|| {
                Error::NotFound(format!("no visit {} at this node", quoted(&vid)))
            })?;
            if visit.institution_code != inst {
                return Err(Error::PermissionDenied(format!(
                    "visit {vid} belongs to another institution"
                )));
            }
            let lines = visits::lines(conn, &vid)?;
            Ok(VisitBill { visit, lines })
        })
        .await
}

//! AdminService.ListAudit: the operator's view of the audit log of peers' reads of this
//! node's person data and of the claims they committed or reversed here.

use yidi_common::{idnum::IdNumber, period, proto, region::RegionCode};

use crate::context::{State, page_size};
use crate::{
    Error, Result,
    store::audit::{self, Action, Filter},
};

/// A time bound: RFC 3339, or a date meaning its midnight in China Standard Time.
fn bound(s: &str, field: &str) -> Result<Option<i64>> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() == 10 {
        let d = period::parse_date(s, field)?;
        let midnight = d
            .and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_local_timezone(period::cst()).single())
            .ok_or_else(|| Error::invalid(field, "not a valid date"))?;
        return Ok(Some(midnight.timestamp_millis()));
    }
    Ok(Some(period::parse_ts(s, field)?.timestamp_millis()))
}

/// Answers ListAudit.
pub async fn list_audit(
    state: &State,
    req: proto::ListAuditRequest,
) -> Result<proto::ListAuditResponse> {
    let peer_region = if req.peer_region.is_empty() {
        None
    } else {
        Some(RegionCode::parse_city(&req.peer_region, "peer_region")?.to_string())
    };
    let person = match req.person.trim() {
        "" => None,
        p if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(p.to_ascii_lowercase())
        }
        p => Some(IdNumber::parse(p, "person")?.as_str().to_owned()),
    };
    let filter = Filter {
        peer_region,
        person,
        from_ms: bound(&req.from, "from")?,
        to_ms: bound(&req.to, "to")?,
        action: if req.action.is_empty() {
            None
        } else {
            Some(Action::parse(&req.action, "action")?)
        },
    };
    let page = req.page.unwrap_or_default();
    let before = if page.page_token.is_empty() {
        0
    } else {
        page.page_token
            .parse::<i64>()
            .map_err(|_| Error::invalid("page.page_token", "not a token from a previous page"))?
    };
    let limit = page_size(page.page_size);
    let entries = state
        .store
        .read(move |conn| audit::list(conn, &filter, before, limit))
        .await?;
    let next_page_token = if entries.len() == limit as usize {
        entries
            .last()
            .map(|e| e.seq.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(proto::ListAuditResponse {
        entries,
        next_page_token,
    })
}

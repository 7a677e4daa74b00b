//! HospitalService.Identify: finding the person in this region or any peer's.

use rusqlite::Connection;
use yidi_common::{idnum::IdNumber, period, proto, region::RegionCode, types::VisitKind};

use super::{
    home_calls::{classify, eligibility, fail_to_error},
    shared::institution,
};
use crate::{Error, Result, context::NodeState, store::persons};

/// HospitalService.Identify.
pub async fn identify(
    st: &NodeState,
    req: proto::IdentifyRequest,
) -> Result<proto::IdentifyResponse> {
    let inst = institution(st, &req.institution_code).await?;
    let kind = if req.visit_kind == 0 {
        VisitKind::Outpatient
    } else {
        VisitKind::from_proto(req.visit_kind, "visit_kind")?
    };
    let found = if !req.card_no.is_empty() {
        let card = yidi_common::card::parse(&req.card_no, "card_no")?;
        let region = RegionCode::parse_city(&req.card_region, "card_region")?;
        lookup(
            st,
            region,
            proto::LookupPersonRequest {
                card_no: card,
                id_number_hash: String::new(),
            },
        )
        .await?
    } else if !req.id_number.is_empty() {
        let id = IdNumber::parse(&req.id_number, "id_number")?;
        lookup_everywhere(st, &id).await?
    } else {
        return Err(Error::invalid(
            "id_number",
            "give card_no with card_region, or id_number",
        ));
    };
    let person = found
        .ok_or_else(|| Error::NotFound("no region of the federation insures this person".into()))?;
    let elig = eligibility(
        st,
        &person.home_region,
        proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: person.id_number.clone(),
            institution_code: inst.code.clone(),
            level: inst.level.to_proto(),
            visit_kind: kind.to_proto(),
            visit_date: period::today().to_string(),
            treatment_region: st.region.to_string(),
        },
    )
    .await
    .map_err(fail_to_error)?;
    Ok(proto::IdentifyResponse {
        id_number: person.id_number,
        name: person.name,
        home_region: person.home_region,
        insurance_type: person.insurance_type,
        person_type: person.person_type,
        status: person.status,
        filing_id: elig
            .filing
            .as_ref()
            .map(|f| f.filing_id.clone())
            .unwrap_or_default(),
        filing_type: elig.applied_filing_type,
        eligible: elig.eligible,
        ineligible_reason: elig.reason,
        accumulators: elig.accumulators,
        account_balance: elig.account_balance,
    })
}

/// Answers LookupPerson from this node's own persons.
pub fn lookup_local(
    conn: &Connection,
    region: RegionCode,
    req: &proto::LookupPersonRequest,
) -> Result<proto::LookupPersonResponse> {
    let p = if !req.card_no.is_empty() {
        persons::get_by_card(conn, &req.card_no)?
    } else {
        persons::get_by_lookup_hash(conn, &req.id_number_hash)?
    };
    Ok(match p {
        None => proto::LookupPersonResponse::default(),
        Some(p) => proto::LookupPersonResponse {
            found: true,
            id_number: p.rec.id_number,
            name: p.rec.name,
            home_region: region.to_string(),
            insurance_type: p.rec.insurance_type.to_proto(),
            person_type: p.rec.person_type.to_proto(),
            status: p.rec.status.to_proto(),
            civil_servant: p.rec.civil_servant,
        },
    })
}

pub(super) async fn lookup(
    st: &NodeState,
    region: RegionCode,
    req: proto::LookupPersonRequest,
) -> Result<Option<proto::LookupPersonResponse>> {
    let resp = if region == st.region {
        let own = st.region;
        st.store
            .read(move |conn| lookup_local(conn, own, &req))
            .await?
    } else {
        let peer = st.peers.get(region.as_str())?;
        peer.client()
            .lookup_person(req)
            .await
            .map_err(|s| fail_to_error(classify(region.as_str(), &s)))?
            .into_inner()
    };
    Ok(resp.found.then_some(resp))
}

/// With only an ID number: this node first, then every peer at once with the number's
/// hash (the number itself never travels; the coordinator keeps no person index).
pub(super) async fn lookup_everywhere(
    st: &NodeState,
    id: &IdNumber,
) -> Result<Option<proto::LookupPersonResponse>> {
    let req = proto::LookupPersonRequest {
        card_no: String::new(),
        id_number_hash: id.lookup_hash(),
    };
    if let Some(p) = lookup(st, st.region, req.clone()).await? {
        return Ok(Some(p));
    }
    let asks = st.peers.all().into_iter().map(|peer| {
        let req = req.clone();
        async move {
            peer.client()
                .lookup_person(req)
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut unreachable = 0;
    for a in answers {
        match a {
            Ok(r) if r.found => return Ok(Some(r)),
            Ok(_) => {}
            Err(_) => unreachable += 1,
        }
    }
    if unreachable > 0 {
        return Err(Error::Unavailable(format!(
            "person not found here, and {unreachable} region(s) did not answer; retry, or identify by card with its issuing region"
        )));
    }
    Ok(None)
}

//! The agency's registry records (persons and filings) between the wire, import rows and
//! the store: their validation and conversions, shared by the gRPC AdminService, the
//! home side of settlement (which answers a filing in CheckEligibility) and the CLI's
//! bulk import, so none of them imports another's layer for it.

use yidi_common::{
    card,
    idnum::IdNumber,
    money::{self, Sign},
    period::parse_date_opt,
    proto,
    region::RegionCode,
    types::{InsuranceType, PersonStatus, PersonType},
};

use crate::{
    Error, Result,
    store::{
        filings::FilingRec,
        persons::{PersonRec, StoredPerson},
    },
};

pub fn validate_text(s: &str, field: &str, max_chars: usize) -> Result<String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    crate::limits::check_len(field, t, max_chars)?;
    Ok(t.to_owned())
}

/// The enum-valued fields of a person, parsed from the wire or from a CSV row.
pub struct PersonKinds {
    pub insurance_type: InsuranceType,
    pub person_type: PersonType,
    pub civil_servant: bool,
    pub status: PersonStatus,
}

pub fn build_person(
    id_number: &str,
    name: &str,
    card_no: &str,
    kinds: PersonKinds,
    balance: &str,
    since: &str,
    clock: &crate::clock::Clock,
) -> Result<PersonRec> {
    let id = IdNumber::parse(id_number, "id_number")?;
    let fits = match kinds.insurance_type {
        InsuranceType::Employee => matches!(
            kinds.person_type,
            PersonType::InService | PersonType::Retired
        ),
        InsuranceType::Resident => {
            matches!(
                kinds.person_type,
                PersonType::ResidentAdult | PersonType::ResidentMinor | PersonType::ResidentElderly
            )
        }
    };
    if !fits {
        return Err(Error::invalid(
            "person_type",
            format!(
                "{} is not a person type of {} insurance",
                kinds.person_type, kinds.insurance_type
            ),
        ));
    }
    let balance =
        money::parse_opt(balance, "account_balance", Sign::NonNegative)?.unwrap_or_default();
    Ok(PersonRec {
        id_number: id.as_str().to_owned(),
        name: validate_text(name, "name", crate::limits::PERSON_NAME)?,
        card_no: if card_no.is_empty() {
            None
        } else {
            Some(card::parse(card_no, "card_no")?)
        },
        insurance_type: kinds.insurance_type,
        person_type: kinds.person_type,
        civil_servant: kinds.civil_servant,
        status: kinds.status,
        account_fen: money::to_fen(balance),
        enrolled_since: match parse_date_opt(since, "enrolled_since")? {
            Some(d) => {
                clock.not_future_day(d, "enrolled_since")?;
                d
            }
            None => clock.today(),
        },
    })
}

pub fn person_from_fields(
    id_number: &str,
    f: Option<&proto::PersonFields>,
    clock: &crate::clock::Clock,
) -> Result<PersonRec> {
    let f = f.ok_or_else(|| Error::invalid("fields", "missing"))?;
    let status = if f.status == 0 {
        PersonStatus::Active
    } else {
        PersonStatus::from_proto(f.status, "fields.status")?
    };
    let kinds = PersonKinds {
        insurance_type: InsuranceType::from_proto(f.insurance_type, "fields.insurance_type")?,
        person_type: PersonType::from_proto(f.person_type, "fields.person_type")?,
        civil_servant: f.civil_servant,
        status,
    };
    build_person(
        id_number,
        &f.name,
        &f.card_no,
        kinds,
        &f.account_balance,
        &f.enrolled_since,
        clock,
    )
}

pub fn parse_bool(s: &str, field: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" | "n" => Ok(false),
        "true" | "1" | "yes" | "y" => Ok(true),
        other => Err(Error::invalid(
            field,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

pub fn person_from_row(r: &proto::PersonRow, clock: &crate::clock::Clock) -> Result<PersonRec> {
    let status = if r.status.trim().is_empty() {
        PersonStatus::Active
    } else {
        PersonStatus::parse(&r.status, "status")?
    };
    let kinds = PersonKinds {
        insurance_type: InsuranceType::parse(&r.insurance_type, "insurance_type")?,
        person_type: PersonType::parse(&r.person_type, "person_type")?,
        civil_servant: parse_bool(&r.civil_servant, "civil_servant")?,
        status,
    };
    build_person(
        r.id_number.trim(),
        &r.name,
        r.card_no.trim(),
        kinds,
        r.account_balance.trim(),
        r.enrolled_since.trim(),
        clock,
    )
}

pub fn person_to_proto(region: RegionCode, p: &StoredPerson) -> proto::Person {
    let r = &p.rec;
    let (birth_date, sex) = IdNumber::parse(&r.id_number, "id_number")
        .map(|id| (id.birth_date().to_string(), id.sex().to_owned()))
        .unwrap_or_default();
    proto::Person {
        id_number: r.id_number.clone(),
        fields: Some(proto::PersonFields {
            name: r.name.clone(),
            card_no: r.card_no.clone().unwrap_or_default(),
            insurance_type: r.insurance_type.to_proto(),
            person_type: r.person_type.to_proto(),
            civil_servant: r.civil_servant,
            status: r.status.to_proto(),
            account_balance: money::format(money::from_fen(r.account_fen)),
            enrolled_since: r.enrolled_since.to_string(),
        }),
        home_region: region.to_string(),
        birth_date,
        sex,
        created_at: p.created_at.clone(),
        updated_at: p.updated_at.clone(),
    }
}

pub fn filing_to_proto(f: &FilingRec) -> proto::Filing {
    proto::Filing {
        filing_id: f.filing_id.clone(),
        id_number: f.id_number.clone(),
        filing_type: f.filing_type.to_proto(),
        treatment_region: f.treatment_region.clone(),
        institutions: f.institutions.clone(),
        valid_from: f.valid_from.to_string(),
        valid_to: f.valid_to.map(|d| d.to_string()).unwrap_or_default(),
        status: f.status.to_proto(),
        note: f.note.clone(),
        applied_at: f.applied_at.clone(),
        decided_at: f.decided_at.clone().unwrap_or_default(),
    }
}

/// The reason of an import row repeating the key of row `first`: the CLI (across a
/// whole file) and the node (within one request) refuse the later row in these words.
pub fn repeated_reason(key: &str, first: u64, what: &str) -> String {
    format!(
        "{key} is already on line {first}; the file must have one row per {what} (this line was not imported)"
    )
}

pub fn row_error(row: u64, e: Error) -> proto::RowError {
    match e {
        Error::Invalid { field, reason } => proto::RowError { row, field, reason },
        other => proto::RowError {
            row,
            field: String::new(),
            reason: other.to_string(),
        },
    }
}

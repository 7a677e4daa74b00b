//! `yidi admin audit`: the node's audit log of peers' reads of its person data and of
//! the claims they committed or reversed there, newest first, filtered by peer, person,
//! time and action.

use clap::Args;
use tonic::Status;
use yidi_common::proto;

use super::{
    admin::{Client, Globals, Page, PageArgs, collect},
    output::{self, Field, Record},
};

/// Filters of `yidi admin audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this peer region, e.g. 330200.
    #[arg(long)]
    pub peer: Option<String>,
    /// Only this person: an ID number or its 64-hex lookup hash.
    #[arg(long)]
    pub person: Option<String>,
    /// From this time on: RFC 3339, or YYYY-MM-DD (midnight UTC+8).
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time: RFC 3339, or YYYY-MM-DD (midnight UTC+8).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this action: LookupPerson, CheckEligibility, CommitClaim or ReverseClaim.
    #[arg(long)]
    pub action: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

impl Record for proto::AuditEntry {
    const PLURAL: &'static str = "entries";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "seq",
        "at",
        "peer_region",
        "action",
        "id_number",
        "reference",
        "institution_code",
        "outcome",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let t = |s: &String| Field::Text(s.clone());
        vec![
            ("seq", Field::Int(self.seq)),
            ("at", t(&self.at)),
            ("peer_region", t(&self.peer_region)),
            ("peer_serial", t(&self.peer_serial)),
            ("action", t(&self.action)),
            ("id_number", t(&self.id_number)),
            ("person_hash", t(&self.person_hash)),
            ("reference", t(&self.reference)),
            ("institution_code", t(&self.institution_code)),
            ("outcome", t(&self.outcome)),
            ("detail", t(&self.detail)),
        ]
    }
}

/// Runs `yidi admin audit`.
pub async fn run(client: &mut Client, g: &Globals, args: AuditArgs) -> anyhow::Result<i32> {
    let base = proto::ListAuditRequest {
        peer_region: args.peer.unwrap_or_default(),
        person: args.person.unwrap_or_default(),
        from: args.from.unwrap_or_default(),
        to: args.to.unwrap_or_default(),
        action: args.action.unwrap_or_default(),
        page: None,
    };
    let list = collect(&args.page, |p| {
        let mut c = client.clone();
        let req = proto::ListAuditRequest {
            page: Some(p),
            ..base.clone()
        };
        async move {
            let r = c.list_audit(req).await?.into_inner();
            Ok::<_, Status>(Page {
                items: r.entries,
                next_page_token: r.next_page_token,
                total: None,
            })
        }
    })
    .await?;
    output::print_list(&list, g.json);
    Ok(0)
}

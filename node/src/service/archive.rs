//! AdminService's archive calls (ExportArchive, ReadArchive, PurgeArchive,
//! WriteArchive, RestoreArchive, ListArchives): decode, check, call
//! `clearing::archive`, encode. docs/admin.md "Archives".

use yidi_common::proto;

use crate::{
    Result,
    clearing::archive::{self, Status},
    context::NodeState,
};

fn to_proto(s: Status) -> proto::ArchiveStatus {
    proto::ArchiveStatus {
        period: s.period,
        state: s.state.as_str().to_owned(),
        manifest: s.manifest.map(|m| m.to_json()).unwrap_or_default(),
        rows_done: s.rows_done,
        live_rows: s.live_rows,
        pages: s.pages,
        free_pages: s.free_pages,
        page_size: s.page_size,
    }
}

pub async fn export(
    st: &NodeState,
    req: proto::ArchivePeriodRequest,
) -> Result<proto::ArchiveStatus> {
    Ok(to_proto(archive::export(st, &req.period).await?))
}

pub async fn read(st: &NodeState, req: proto::ArchiveChunkRequest) -> Result<proto::ArchiveChunk> {
    let (data, total) = archive::read_chunk(st, &req.period, req.offset).await?;
    Ok(proto::ArchiveChunk {
        period: req.period,
        offset: req.offset,
        data,
        total,
    })
}

pub async fn purge(
    st: &NodeState,
    req: proto::ArchivePeriodRequest,
) -> Result<proto::ArchiveStatus> {
    if req.sha256.is_empty() {
        return Err(crate::Error::invalid(
            "sha256",
            "missing: the SHA-256 of your verified copy of the archive (its manifest's sha256)",
        ));
    }
    Ok(to_proto(
        archive::purge(st, &req.period, &req.sha256, req.max_rows).await?,
    ))
}

pub async fn write(st: &NodeState, req: proto::ArchiveChunk) -> Result<proto::ArchiveChunk> {
    let total = archive::write_chunk(st, &req.period, req.offset, req.data).await?;
    Ok(proto::ArchiveChunk {
        period: req.period,
        offset: req.offset,
        data: Vec::new(),
        total,
    })
}

pub async fn restore(
    st: &NodeState,
    req: proto::RestoreArchiveRequest,
) -> Result<proto::ArchiveStatus> {
    Ok(to_proto(archive::restore(st, &req.manifest).await?))
}

pub async fn list(
    st: &NodeState,
    req: proto::ArchivePeriodRequest,
) -> Result<proto::ListArchivesResponse> {
    let archives = if req.period.is_empty() {
        archive::list(st).await?
    } else {
        vec![archive::show(st, &req.period).await?]
    };
    Ok(proto::ListArchivesResponse {
        archives: archives.into_iter().map(to_proto).collect(),
    })
}

//! `yidi footprint`: bytes on disk per table and per index of a node's (or the
//! coordinator's) store, and per settlement the node took part in
//! (`yidi_node::store::footprint`); docs/operator.md ("Sizing the disk") reads it.

use std::path::PathBuf;

use clap::Args;

/// Flags of `yidi footprint`.
#[derive(Debug, Clone, Args)]
pub struct FootprintArgs {
    /// The data directory of the running or stopped node or coordinator.
    #[arg(long, env = "YIDI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `yidi footprint`.
pub fn run(args: &FootprintArgs) -> anyhow::Result<()> {
    let path = crate::backup::store_file(&args.data_dir)?;
    let f = yidi_node::store::footprint::measure_file(&path)?;
    if args.json {
        let objects: Vec<_> = f
            .objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "name": o.name, "table": o.table, "index": o.index, "rows": o.rows,
                    "pages": o.pages, "bytes": o.bytes, "payload": o.payload,
                    "bytes_per_settlement": f.per_settlement(o.bytes),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "file": path.display().to_string(),
                "page_size": f.page_size,
                "bytes": f.bytes(),
                "free_bytes": f.free_pages * f.page_size,
                "settlements": f.settlements,
                "bytes_per_settlement": f.per_settlement(f.bytes()),
                "objects": objects,
            }))?
        );
        return Ok(());
    }
    println!(
        "{}: {} bytes ({} pages of {}, {} free), {} settlements: {} bytes per settlement",
        path.display(),
        f.bytes(),
        f.pages,
        f.page_size,
        f.free_pages,
        f.settlements,
        f.per_settlement(f.bytes())
    );
    println!(
        "{:<34} {:<16} {:>12} {:>14} {:>8} {:>12}",
        "table / index", "of table", "rows", "bytes", "full %", "B/settlement"
    );
    for o in &f.objects {
        println!(
            "{:<34} {:<16} {:>12} {:>14} {:>8} {:>12}",
            if o.index {
                format!("  {}", o.name)
            } else {
                o.name.clone()
            },
            if o.index { o.table.as_str() } else { "" },
            o.rows,
            o.bytes,
            (o.payload * 100).checked_div(o.bytes).unwrap_or(0),
            f.per_settlement(o.bytes)
        );
    }
    Ok(())
}

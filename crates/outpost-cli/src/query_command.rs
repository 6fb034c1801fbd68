//! `outpost query "SELECT ..."`: runs an IoT Hub query on the hub and pages through every row.

use clap::Args;
use serde_json::Value;

use crate::output::{print_table, OutputFormat};
use crate::service::ServiceClient;
use crate::HubArgs;

/// The rows asked for per page: the hub's largest page, so that a large fleet takes few round trips.
const PAGE_SIZE: usize = 1000;

/// `outpost query` options.
#[derive(Args)]
pub struct QueryArgs {
    /// The query, in IoT Hub's query language (`SELECT * FROM devices WHERE tags.site = 'north'`).
    query: String,
    /// Stop after this many rows.
    #[arg(long)]
    top: Option<usize>,
    /// Rows asked for per request (1 to 1000).
    #[arg(long, default_value_t = PAGE_SIZE)]
    page_size: usize,
}

/// Runs the query and prints every row: a table of the usual twin columns for people (the rows' own fields
/// for projections and aggregates), a JSON array with `--output json`.
pub async fn run(args: &HubArgs, options: &QueryArgs) -> anyhow::Result<()> {
    let client = ServiceClient::new(args)?;
    let limit = options.top.unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    let mut continuation = None;
    while rows.len() < limit {
        let page_size = options
            .page_size
            .clamp(1, PAGE_SIZE)
            .min(limit - rows.len());
        let (page, next) = client
            .query_page(&options.query, page_size, continuation.as_deref())
            .await?;
        rows.extend(page);
        match next {
            Some(token) => continuation = Some(token),
            None => break,
        }
    }
    rows.truncate(limit);
    print_rows(args.output, &rows);
    Ok(())
}

/// Prints query rows; twins as a table of their identity, other rows with their own fields as columns.
fn print_rows(format: OutputFormat, rows: &[Value]) {
    if format == OutputFormat::Json {
        print_table(format, rows, &[]);
        return;
    }
    let twins = rows
        .iter()
        .all(|row| row.get("etag").is_some() && row.get("properties").is_some());
    if twins && !rows.is_empty() {
        let columns = [
            ("DEVICE", "deviceId"),
            ("MODULE", "moduleId"),
            ("STATUS", "status"),
            ("CONNECTION", "connectionState"),
            ("TAGS", "tags"),
        ];
        print_table(format, rows, &columns);
        return;
    }
    // A projection or an aggregate: its first row's fields, in their order, are the columns.
    let fields: Vec<String> = rows
        .first()
        .and_then(Value::as_object)
        .map(|object| object.keys().cloned().collect())
        .unwrap_or_default();
    let columns: Vec<(&str, &str)> = fields.iter().map(|f| (f.as_str(), f.as_str())).collect();
    print_table(format, rows, &columns);
    if rows.is_empty() {
        println!("(no rows)");
    }
}

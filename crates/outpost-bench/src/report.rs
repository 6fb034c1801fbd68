//! The figures as Markdown: tables, one section per benchmark, and `docs/benchmarks.md`, where each section is
//! rewritten in place between its markers so that other sections and hand-written commentary stay.

use std::path::Path;

use anyhow::Context as _;

/// A Markdown table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|&h| h.to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table in Markdown, one line per row.
    pub fn to_markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.headers);
        out.push_str(&line(&vec!["---".to_owned(); self.headers.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// The figures of one benchmark.
#[derive(Debug, Clone)]
pub struct Section {
    /// Stable id: the section's markers in the report (`hub`).
    pub id: &'static str,
    /// Heading.
    pub title: String,
    /// Sub-headings, paragraphs and tables, in order.
    pub parts: Vec<Part>,
}

/// A piece of a section.
#[derive(Debug, Clone)]
pub enum Part {
    /// A `###` heading.
    Heading(String),
    /// A paragraph (or a list).
    Text(String),
    /// A table.
    Table(Table),
}

/// Where, when and how the figures were measured.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The machine, described.
    pub machine: String,
    /// When (UTC).
    pub date: String,
    /// The command line that produced the figures.
    pub command: String,
}

impl Section {
    /// The section in Markdown, with its provenance under the heading.
    pub fn to_markdown(&self, provenance: &Provenance) -> String {
        let mut out = format!(
            "## {}\n\n- Machine: {}\n- Date: {}\n- Command: `{}`\n",
            self.title, provenance.machine, provenance.date, provenance.command
        );
        for part in &self.parts {
            out.push('\n');
            match part {
                Part::Heading(h) => {
                    out.push_str("### ");
                    out.push_str(h);
                    out.push('\n');
                }
                Part::Text(t) => {
                    out.push_str(t.trim_end());
                    out.push('\n');
                }
                Part::Table(t) => out.push_str(&t.to_markdown()),
            }
        }
        out
    }
}

/// The top of a new report.
const PREAMBLE: &str = "# Benchmarks

Figures printed by the benchmark harness, `crates/outpost-bench`, run against the real `outpost` binary on
loopback. Build and run it with:

    cargo build --release -p outpost-cli -p outpost-bench -p simulated-temperature-sensor -p filter
    target/release/outpost-bench all      # or one benchmark: outpost-bench hub | edge | soak | eventhub

The standard profile (`all`) takes about 10 minutes. `outpost-bench edge --full` is the long profile of the edge
benchmark (a 1,000,000-message backlog, a 10-minute soak). `--quick` is a smoke run of a few seconds whose figures
are printed, not recorded. The edge benchmark needs `mosquitto` (scripts/setup-test-env.sh installs it) and, for
its container case, Docker and the local registry (scripts/local-registry.sh); without them it says what it skipped. Each section below is
rewritten by the harness between its `outpost-bench` markers; commentary outside the markers stays.
";

fn markers(id: &str) -> (String, String) {
    (
        format!("<!-- outpost-bench:{id}:begin -->"),
        format!("<!-- outpost-bench:{id}:end -->"),
    )
}

/// The report with section `id` set to `body`: replaced between its markers if present, else appended.
pub fn update_document(existing: Option<&str>, id: &str, body: &str) -> String {
    let (begin, end) = markers(id);
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    let document = existing.unwrap_or(PREAMBLE);
    if let (Some(start), Some(stop)) = (document.find(&begin), document.find(&end)) {
        if start < stop {
            let mut out = String::with_capacity(document.len() + block.len());
            out.push_str(&document[..start]);
            out.push_str(&block);
            out.push_str(&document[stop + end.len()..]);
            return out;
        }
    }
    format!("{}\n\n{block}\n", document.trim_end())
}

/// Writes the sections into the report at `path`, creating it if needed.
pub fn write(path: &Path, sections: &[Section], provenance: &Provenance) -> anyhow::Result<()> {
    let mut document = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for section in sections {
        let body = section.to_markdown(provenance);
        document = Some(update_document(document.as_deref(), section.id, &body));
    }
    if let Some(document) = document {
        std::fs::write(path, document)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_report_starts_with_the_preamble_and_holds_the_section() {
        let doc = update_document(None, "hub", "## Hub\nfigures");
        assert!(doc.starts_with("# Benchmarks"));
        assert!(doc.contains(
            "<!-- outpost-bench:hub:begin -->\n## Hub\nfigures\n<!-- outpost-bench:hub:end -->\n"
        ));
    }

    #[test]
    fn a_section_is_replaced_in_place_and_the_rest_stays() {
        let before = "# Benchmarks\n\n<!-- outpost-bench:hub:begin -->\nold\n<!-- outpost-bench:hub:end -->\n\nNotes by hand.\n\n<!-- outpost-bench:edge:begin -->\nedge\n<!-- outpost-bench:edge:end -->\n";
        let after = update_document(Some(before), "hub", "new");
        assert_eq!(
            after,
            before.replace("\nold\n", "\nnew\n"),
            "only the hub section changes"
        );
    }

    #[test]
    fn a_section_not_yet_in_the_report_is_appended() {
        let before = "# Benchmarks\n\n<!-- outpost-bench:hub:begin -->\nhub\n<!-- outpost-bench:hub:end -->\n";
        let after = update_document(Some(before), "edge", "edge");
        assert!(after.starts_with(before.trim_end()));
        assert!(after.ends_with(
            "<!-- outpost-bench:edge:begin -->\nedge\n<!-- outpost-bench:edge:end -->\n"
        ));
    }

    #[test]
    fn a_table_renders_as_markdown() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        assert_eq!(table.to_markdown(), "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}

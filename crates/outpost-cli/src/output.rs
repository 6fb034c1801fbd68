//! Printing results for people or for scripts.

use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people.
    Human,
    /// JSON for scripts.
    Json,
}

/// Prints one JSON object: as JSON, or as `key: value` lines of the fields named in `fields` (all when empty).
pub fn print_object(format: OutputFormat, value: &Value, fields: &[&str]) {
    if format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    let Some(object) = value.as_object() else {
        println!("{value}");
        return;
    };
    let keys: Vec<&str> = if fields.is_empty() {
        object.keys().map(String::as_str).collect()
    } else {
        fields.to_vec()
    };
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    for key in keys {
        if let Some(value) = value.pointer(&format!("/{}", key.replace('.', "/"))) {
            println!("{key:<width$}  {}", scalar(value));
        }
    }
}

/// Prints a list: as a JSON array, or as a table of `columns` (JSON pointers without the leading `/`).
pub fn print_table(format: OutputFormat, rows: &[Value], columns: &[(&str, &str)]) {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, pointer)| {
                    row.pointer(&format!("/{pointer}"))
                        .map_or_else(String::new, scalar)
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(title, _)| *title).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
